// llama.cpp's own attention weights, for the attention-based eviction policies (h2o, tova, snapkv).
// A context created with record_attention gets a graph callback that reads every layer's softmaxed
// attention (kq_soft_max-<il>, [n_kv, n_rows, n_head], flash attention off) and sums it per cell;
// attention_scores() turns cells into positions and averages over layers and heads.
#include "handles.h"

#include "llama-kvd.h"

#include <cstdlib>
#include <cstring>
#include <map>

namespace pykvd {

namespace {

constexpr const char * kSoftmaxName = "kq_soft_max-";

int32_t layer_of(const ggml_tensor * t) {
    const size_t prefix = std::strlen(kSoftmaxName);
    if (std::strncmp(t->name, kSoftmaxName, prefix) != 0) return -1;
    return std::atoi(t->name + prefix);
}

void add_rows(std::vector<double> & into, const std::vector<float> & w, int64_t n_kv, int64_t n_rows, int64_t n_head,
              int64_t first_row) {
    if ((int64_t) into.size() < n_kv) into.resize(n_kv, 0.0);
    for (int64_t h = 0; h < n_head; ++h) {
        for (int64_t r = first_row; r < n_rows; ++r) {
            const float * row = w.data() + (h * n_rows + r) * n_kv;
            for (int64_t c = 0; c < n_kv; ++c) into[c] += row[c] / (double) n_head;
        }
    }
}

}  // namespace

bool AttentionRecorder::callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<AttentionRecorder *>(user_data);
    const int32_t il = layer_of(t);
    if (ask) return il >= 0;
    if (il < 0 || t->type != GGML_TYPE_F32 || il >= (int32_t) self->total.size()) return true;
    const int64_t n_kv = t->ne[0], n_rows = t->ne[1], n_head = t->ne[2] * t->ne[3];
    std::vector<float> w(ggml_nelements(t));
    ggml_backend_tensor_get(t, w.data(), 0, w.size() * sizeof(float));
    add_rows(self->total[il], w, n_kv, n_rows, n_head, 0);
    // The last decoded ubatch's final rows: the current query (tova) and the observation window (snapkv).
    self->last[il].assign(n_kv, 0.0);
    add_rows(self->last[il], w, n_kv, n_rows, n_head, n_rows - 1);
    self->recent[il].assign(n_kv, 0.0);
    add_rows(self->recent[il], w, n_kv, n_rows, n_head, std::max<int64_t>(0, n_rows - self->window));
    return true;
}

void AttentionRecorder::clear(int32_t n_layer) {
    total.assign(n_layer, {});
    last.assign(n_layer, {});
    recent.assign(n_layer, {});
}

py::tuple attention_scores(Context & self) {
    llama_context * ctx = self.get();
    if (!self.attention) throw py::value_error("this context does not record attention");
    const AttentionRecorder & rec = *self.attention;
    const int32_t n_layer = (int32_t) rec.total.size();
    int32_t n_seen = 0;
    std::map<llama_pos, std::array<double, 3>> by_pos;
    for (int32_t il = 0; il < n_layer; ++il) {
        const auto & total = rec.total[il];
        if (total.empty()) continue;
        ++n_seen;
        std::vector<llama_pos> pos(total.size());
        if (llama_kvd_cell_positions(ctx, il, 0, pos.data(), (int32_t) pos.size()) < 0) {
            throw DecodeError("cannot map attention columns to positions for this cache");
        }
        for (size_t c = 0; c < pos.size(); ++c) {
            if (pos[c] < 0) continue;
            auto & s = by_pos[pos[c]];
            s[0] += total[c];
            s[1] += c < rec.last[il].size() ? rec.last[il][c] : 0.0;
            s[2] += c < rec.recent[il].size() ? rec.recent[il][c] : 0.0;
        }
    }
    const auto n = (py::ssize_t) by_pos.size();
    py::array_t<int32_t> positions(n);
    py::array_t<double> total(n), last(n), window(n);
    py::ssize_t i = 0;
    for (const auto & [p, s] : by_pos) {
        positions.mutable_at(i) = p;
        total.mutable_at(i) = n_seen ? s[0] / n_seen : 0.0;
        last.mutable_at(i) = n_seen ? s[1] / n_seen : 0.0;
        window.mutable_at(i) = n_seen ? s[2] / n_seen : 0.0;
        ++i;
    }
    return py::make_tuple(positions, total, last, window);
}

void bind_attention(py::class_<Context> & cls) {
    cls.def_property_readonly("records_attention", [](const Context & s) { return (bool) s.attention; })
        .def("attention_scores", &attention_scores,
             "Attention the last decode paid to each held position, averaged over layers and heads:\n"
             "(positions, summed over all query rows, from the last row, from the last `window` rows).");
}

}  // namespace pykvd
