// K/V re-injection: P2 refill and P3 partial-depth forward over llama-kvd.h.
// Python validates first (pykvd/reinject.py); the checks here keep a direct caller
// of the module from reaching llama.cpp with arrays it would misread.
#include "handles.h"

#include "llama-kvd.h"

#include <string>

namespace pykvd {

namespace {

using Rows = py::array_t<float, py::array::c_style>;
using Positions = py::array_t<int32_t, py::array::c_style>;

void check_rows(const Context & self, const Rows & h, py::ssize_t n_blocks, const Positions & pos) {
    const auto n_embd = (py::ssize_t) llama_model_n_embd(self.model->model);
    const py::ssize_t want_ndim = n_blocks < 0 ? 2 : 3;
    if (pos.ndim() != 1 || pos.shape(0) == 0) throw py::value_error("positions must be a non-empty 1-D array");
    if (h.ndim() != want_ndim || h.shape(want_ndim - 1) != n_embd || h.shape(want_ndim - 2) != pos.shape(0) ||
        (n_blocks >= 0 && h.shape(0) != n_blocks)) {
        throw py::value_error("residual rows have the wrong shape");
    }
}

void refill(Context & self, const Rows & h, const Positions & pos, int32_t il_begin, int32_t il_end, llama_seq_id seq) {
    self.get();
    check_rows(self, h, (py::ssize_t) il_end - il_begin, pos);
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> guard(self.lock);
        if (!self.ctx) throw ClosedError("context is closed");
        rc = llama_kvd_refill(self.ctx, seq, pos.data(), (int32_t) pos.shape(0), il_begin, il_end, h.data());
    }
    raise_for_kvd_status(rc, "refill");
}

py::tuple forward(Context & self, const Rows & h, const Positions & pos, int32_t il_begin, int32_t il_end,
                  llama_seq_id seq, bool with_logits) {
    self.get();
    check_rows(self, h, -1, pos);
    Rows out({h.shape(0), h.shape(1)});
    Rows logits(std::vector<py::ssize_t>{with_logits ? h.shape(0) : 0,
                                         (py::ssize_t) llama_vocab_n_tokens(self.model->vocab())});
    float * h_dst = out.mutable_data();
    float * logits_dst = with_logits ? logits.mutable_data() : nullptr;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> guard(self.lock);
        if (!self.ctx) throw ClosedError("context is closed");
        rc = llama_kvd_forward(self.ctx, seq, pos.data(), (int32_t) pos.shape(0), il_begin, il_end, h.data(), h_dst,
                               logits_dst);
    }
    raise_for_kvd_status(rc, "forward");
    return py::make_tuple(out, with_logits ? py::object(logits) : py::none());
}

using Tokens = py::array_t<int32_t, py::array::c_style>;

// P3 from token ids, no output head: h^(layer_end) [token, :].
Rows forward_tokens(Context & self, const Tokens & tokens, const Positions & pos, int32_t il_end, llama_seq_id seq) {
    self.get();
    if (tokens.ndim() != 1 || pos.ndim() != 1 || tokens.shape(0) == 0 || tokens.shape(0) != pos.shape(0)) {
        throw py::value_error("tokens and positions must be non-empty 1-D arrays of one length");
    }
    Rows out({tokens.shape(0), (py::ssize_t) llama_model_n_embd(self.model->model)});
    float * h_dst = out.mutable_data();
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> guard(self.lock);
        if (!self.ctx) throw ClosedError("context is closed");
        rc = llama_kvd_forward_tokens(self.ctx, seq, tokens.data(), pos.data(), (int32_t) pos.shape(0), il_end, h_dst);
    }
    raise_for_kvd_status(rc, "forward_tokens");
    return out;
}

}  // namespace

void raise_for_kvd_status(int32_t rc, const char * what) {
    switch (rc) {
        case LLAMA_KVD_OK:
            return;
        case LLAMA_KVD_BAD_ARGUMENT:
            throw py::value_error(std::string(what) + ": layer range, sequence or positions out of range");
        case LLAMA_KVD_NO_ROOM:
            throw NoRoomError(std::string(what) + ": no free KV cells for the positions");
        case LLAMA_KVD_SHARED_CELL:
            throw py::value_error(std::string(what) + ": a position's cell is shared with another sequence");
        case LLAMA_KVD_MISSING_POSITION:
            throw py::value_error(std::string(what) + ": a position is neither in a cell nor among the ephemeral rows");
        case LLAMA_KVD_UNSUPPORTED:
            throw DecodeError(std::string(what) + ": not available for this architecture or cache type");
        default:
            throw DecodeError(std::string(what) + " failed\n" + recent_log());
    }
}

void bind_reinject(py::class_<Context> & cls) {
    cls.def("refill", &refill, py::arg("h"), py::arg("positions"), py::arg("layer_begin"), py::arg("layer_end"),
            py::arg("seq_id") = 0,
            "P2: write K/V of layers [layer_begin, layer_end) from h[layer - layer_begin, token, :].")
        .def("forward", &forward, py::arg("h"), py::arg("positions"), py::arg("layer_begin"), py::arg("layer_end"),
             py::arg("seq_id") = 0, py::arg("logits") = false,
             "P3: run layers [layer_begin, layer_end) from h [token, :], write their K/V; returns\n"
             "(h^(layer_end), logits or None). logits=True needs layer_end == n_layer.")
        .def("forward_tokens", &forward_tokens, py::arg("tokens"), py::arg("positions"), py::arg("layer_end"),
             py::arg("seq_id") = 0,
             "P3 from token ids: run layers [0, layer_end) from the tokens' embeddings, write their K/V;\n"
             "returns h^(layer_end) [token, :]. Runs no output head.");
}

}  // namespace pykvd
