// P4 ephemeral rows over llama-kvd.h: a decode whose attention also covers evicted tokens,
// recomputed from their checkpoint and never stored. Python validates first
// (pykvd/policies/kvdirect.py); the checks here keep a direct caller of the module from reaching
// llama.cpp with arrays it would misread.
#include "handles.h"

#include "llama-kvd.h"

namespace pykvd {

namespace {

using Rows = py::array_t<float, py::array::c_style>;
using Blocks = py::array;  // float32 [n_layer, rows, n_embd]: any layer stride, packed rows (not converted)
using Ids = py::array_t<int32_t, py::array::c_style>;
using Flags = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;

// The number of logits rows a decode of n tokens returns: the flagged ones, or all.
py::ssize_t count_outputs(const py::object & outputs, py::ssize_t n, Flags & flags) {
    if (outputs.is_none()) return n;
    flags = outputs.cast<Flags>();
    if (flags.ndim() != 1 || flags.shape(0) != n) throw py::value_error("outputs must be one flag per token");
    py::ssize_t n_out = 0;
    for (py::ssize_t i = 0; i < n; ++i) n_out += flags.data()[i] != 0;
    if (n_out == 0) throw py::value_error("outputs must flag at least one token");
    return n_out;
}

// rows as float32 [n_layer, any, n_embd] blocks: each layer's rows packed, layers any (non-overlapping)
// distance apart, so a view into a checkpoint store passes without a copy. Returns the layer stride
// in floats.
int64_t layer_stride(const Blocks & rows, py::ssize_t n_layer, py::ssize_t n_embd, const char * what) {
    const auto f = (py::ssize_t) sizeof(float);
    const bool shape_ok = py::isinstance<py::array_t<float>>(rows) && rows.ndim() == 3 && rows.shape(0) == n_layer &&
                          rows.shape(2) == n_embd;
    if (shape_ok && rows.shape(1) == 0) return 0;  // no rows: numpy gives such arrays any strides
    // Each layer's rows packed (a single row's stride along rows is not looked at), layers apart.
    const bool strides_ok =
        shape_ok && rows.strides(2) == f && (rows.shape(1) == 1 || rows.strides(1) == n_embd * f) &&
        (n_layer == 1 || (rows.strides(0) % f == 0 && rows.strides(0) >= rows.shape(1) * n_embd * f));
    if (!strides_ok) {
        throw py::value_error(std::string(what) + " must be float32 (n_layer, rows, n_embd) with packed rows");
    }
    return n_layer > 1 ? rows.strides(0) / f : rows.shape(1) * n_embd;
}

// (logits [n_outputs, n_vocab], h^(0..n_layer-1) of the rows run from their ids [n_layer, n_run, n_embd] or None)
py::tuple decode_ephemeral(Context & self, const Ids & tokens, llama_pos pos0, const Ids & eph_tokens,
                           const Ids & eph_pos, const py::object & eph_h, bool capture, llama_seq_id seq,
                           const py::object & outputs, const py::object & h_out_into) {
    self.get();
    const llama_model * model = self.model->model;
    const auto n_layer = (py::ssize_t) llama_model_n_layer(model);
    const auto n_embd = (py::ssize_t) llama_model_n_embd(model);
    const auto n_vocab = (py::ssize_t) llama_vocab_n_tokens(self.model->vocab());
    if (tokens.ndim() != 1 || tokens.shape(0) == 0) throw py::value_error("tokens must be a non-empty 1-D array");
    if (eph_tokens.ndim() != 1 || eph_pos.ndim() != 1 || eph_tokens.shape(0) != eph_pos.shape(0)) {
        throw py::value_error("ephemeral tokens and positions must be 1-D arrays of one length");
    }
    const py::ssize_t n = tokens.shape(0);
    const py::ssize_t n_eph = eph_pos.shape(0);
    // The first n_eph_h ephemeral rows enter from their residuals, the rest run from their ids.
    Blocks residuals;
    py::ssize_t n_eph_h = 0;
    int64_t h_in_stride = 0;
    if (!eph_h.is_none()) {
        residuals = eph_h.cast<Blocks>();
        h_in_stride = layer_stride(residuals, n_layer, n_embd, "ephemeral residuals");
        if (residuals.shape(1) > n_eph) throw py::value_error("more ephemeral residual rows than ephemeral rows");
        n_eph_h = residuals.shape(1);
    }
    const py::ssize_t n_run = n_eph - n_eph_h + n;
    std::vector<llama_pos> pos(n);
    for (py::ssize_t i = 0; i < n; ++i) pos[i] = pos0 + (llama_pos) i;
    Flags flags;
    const py::ssize_t n_out = count_outputs(outputs, n, flags);
    Rows logits({n_out, n_vocab});
    // Captured rows go to the caller's array when it gives one (its checkpoint store, written in place).
    Blocks h_out;
    int64_t h_out_stride = 0;
    if (!h_out_into.is_none()) {
        if (!capture) throw py::value_error("h_out is only written when capture is set");
        h_out = h_out_into.cast<Blocks>();
        h_out_stride = layer_stride(h_out, n_layer, n_embd, "h_out");
        if (h_out.shape(1) != n_run || !h_out.writeable()) {
            throw py::value_error("h_out must be writeable, with one row per row run from its id");
        }
    } else {
        h_out = Rows(std::vector<py::ssize_t>{capture ? n_layer : 0, n_run, n_embd});
    }
    const auto * h_in = eph_h.is_none() ? nullptr : static_cast<const float *>(residuals.data());
    float * logits_dst = logits.mutable_data();
    float * h_dst = capture ? static_cast<float *>(h_out.mutable_data()) : nullptr;
    llama_kvd_ephemeral_params params = llama_kvd_ephemeral_default_params();
    params.seq_id = seq;
    params.tokens = tokens.data();
    params.pos = pos.data();
    params.n_tokens = (int32_t) n;
    params.eph_pos = eph_pos.data();
    params.eph_tokens = eph_tokens.data();
    params.eph_h = h_in;
    params.n_eph = (int32_t) n_eph;
    params.n_eph_h = (int32_t) n_eph_h;
    params.logits = outputs.is_none() ? nullptr : flags.data();
    params.logits_out = logits_dst;
    params.h_out = h_dst;
    params.eph_h_layer_stride = h_in_stride;
    params.h_out_layer_stride = h_out_stride;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> guard(self.lock);
        if (!self.ctx) throw ClosedError("context is closed");
        rc = llama_kvd_decode_ephemeral(self.ctx, &params);
    }
    raise_for_kvd_status(rc, "ephemeral decode");
    return py::make_tuple(logits, capture ? py::object(h_out) : py::none());
}

}  // namespace

void bind_ephemeral(py::class_<Context> & cls) {
    cls.def("decode_ephemeral", &decode_ephemeral, py::arg("tokens"), py::arg("pos0"), py::arg("eph_tokens"),
            py::arg("eph_pos"), py::arg("eph_h") = py::none(), py::arg("capture") = false, py::arg("seq_id") = 0,
            py::arg("outputs") = py::none(), py::arg("h_out") = py::none(),
            "P4: decode tokens at pos0.. while the ephemeral tokens join every layer's attention without\n"
            "taking cells: the first n_eph_h enter from their residuals eph_h [n_layer, n_eph_h, n_embd], the\n"
            "rest run from their ids (eph_tokens holds an id for every ephemeral row).\n"
            "outputs: None (logits for every token) or one flag per token (logits only where set).\n"
            "Returns (logits [n_outputs, n_vocab], h^(0..n_layer-1) of the rows run from their ids,\n"
            "[n_layer, n_eph - n_eph_h + n, n_embd], if capture else None).\n"
            "eph_h and h_out may be views into a [n_layer, rows, n_embd] store (any layer stride, packed\n"
            "rows): the residuals are read from it and h_out, if given, is written in place and returned.");
}

}  // namespace pykvd
