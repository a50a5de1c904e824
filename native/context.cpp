// Contexts: creating them, decoding token batches, logits, KV memory and timings.
#include "handles.h"

#include "llama-kvd.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace pykvd {

namespace {

using TokenArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

std::unique_ptr<Context> create(const Model & model, uint32_t n_ctx, uint32_t n_batch, uint32_t n_ubatch,
                                int32_t n_threads, int32_t n_threads_batch, int flash_attn, uint32_t n_seq_max,
                                bool swa_full, bool bounded, int32_t attention_window, bool batch_invariant) {
    llama_context_params params = llama_context_default_params();
    params.n_ctx = n_ctx;
    params.n_batch = n_batch;
    params.n_ubatch = n_ubatch;
    params.n_seq_max = n_seq_max;
    params.n_threads = n_threads;
    params.n_threads_batch = n_threads_batch;
    params.flash_attn_type = (llama_flash_attn_type) flash_attn;
    params.no_perf = false;
    params.swa_full = swa_full;
    auto out = std::make_unique<Context>();
    out->model = model.handle;
    if (attention_window > 0) {
        // llama.cpp's attention weights exist as tensors only without flash attention.
        if (params.flash_attn_type != LLAMA_FLASH_ATTN_TYPE_DISABLED) {
            throw py::value_error("recording attention needs flash attention off");
        }
        out->attention = std::make_unique<AttentionRecorder>();
        out->attention->window = attention_window;
        params.cb_eval = &AttentionRecorder::callback;
        params.cb_eval_user_data = out->attention.get();
    }
    if (!out->model) throw ClosedError("model is closed");
    clear_recent_log();
    {
        py::gil_scoped_release nogil;
        out->ctx = bounded ? llama_kvd_init_from_model_exact(out->model->model, params)
                           : llama_init_from_model(out->model->model, params);
    }
    if (out->ctx == nullptr) {
        throw DecodeError("llama.cpp could not create a context\n" + recent_log());
    }
    if (batch_invariant && llama_kvd_set_batch_invariant(out->ctx, true) != LLAMA_KVD_OK) {
        throw py::value_error("this llama.cpp build has no batch-invariant CPU kernels");
    }
    out->bounded = bounded;
    return out;
}

// Runs one llama_decode over n tokens at consecutive positions from pos0.
// `outputs`: 0 = no logits, 1 = logits for the last token, 2 = logits for every token.
int32_t decode(Context & self, const int32_t * tokens, int32_t n, llama_pos pos0, llama_seq_id seq, int outputs) {
    std::vector<llama_pos> pos(n);
    std::vector<int32_t> n_seq(n, 1);
    std::vector<llama_seq_id> seq_storage(n, seq);
    std::vector<llama_seq_id *> seq_ptr(n);
    std::vector<int8_t> want(n, outputs == 2 ? 1 : 0);
    for (int32_t i = 0; i < n; ++i) {
        pos[i] = pos0 + i;
        seq_ptr[i] = &seq_storage[i];
    }
    if (outputs == 1 && n > 0) want[n - 1] = 1;
    // h^(n_layer) exists only for output rows; llama.cpp asserts if asked for it otherwise.
    const int32_t n_layer = llama_model_n_layer(self.model->model);
    for (int32_t il : self.capture_layers) {
        if (il == n_layer && outputs != 2 && n > 1) {
            throw py::value_error("capturing h^(n_layer) needs outputs for every token of the batch");
        }
    }
    llama_batch batch{n, const_cast<int32_t *>(tokens), nullptr, pos.data(), n_seq.data(), seq_ptr.data(), want.data()};
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> guard(self.lock);
        if (!self.ctx) throw ClosedError("context is closed");
        if (self.attention) self.attention->clear(llama_model_n_layer(self.model->model));
        // A bounded cache may have evicted the sequence's last tokens: decode past the gap.
        rc = self.bounded ? llama_kvd_decode(self.ctx, batch) : llama_decode(self.ctx, batch);
    }
    if (rc == 0) {
        self.n_outputs = outputs == 2 ? n : (outputs == 1 ? 1 : 0);
        self.n_captured = self.capture_layers.empty() ? 0 : n;
        return rc;
    }
    self.n_captured = 0;
    if (rc == 1) throw NoRoomError("no free KV cells for the batch (context is full)");
    throw DecodeError("llama_decode failed with code " + std::to_string(rc) + "\n" + recent_log());
}

int32_t decode_array(Context & self, TokenArray tokens, llama_pos pos0, llama_seq_id seq, int outputs) {
    if (tokens.ndim() != 1) throw py::value_error("tokens must be a 1-D array");
    const auto n = (int32_t) tokens.shape(0);
    llama_context * ctx = self.get();
    if (n == 0) throw py::value_error("cannot decode an empty batch");
    if ((uint32_t) n > llama_n_batch(ctx)) throw py::value_error("batch is larger than n_batch");
    return decode(self, tokens.data(), n, pos0, seq, outputs);
}

py::array_t<float> logits_row(Context & self, int32_t i) {
    llama_context * ctx = self.get();
    if (self.n_outputs == 0) throw py::value_error("the last batch produced no logits");
    if (i < -self.n_outputs || i >= self.n_outputs) throw py::index_error("logits row out of range");
    const float * row = llama_get_logits_ith(ctx, i);
    if (row == nullptr) throw DecodeError("llama.cpp has no logits for row " + std::to_string(i));
    const int32_t n_vocab = llama_vocab_n_tokens(self.model->vocab());
    return py::array_t<float>(n_vocab, row);
}

py::array_t<float> logits_all(Context & self) {
    llama_context * ctx = self.get();
    if (self.n_outputs == 0) throw py::value_error("the last batch produced no logits");
    const int32_t n_vocab = llama_vocab_n_tokens(self.model->vocab());
    const float * rows = llama_get_logits(ctx);
    if (rows == nullptr) throw DecodeError("llama.cpp has no logits");
    py::array_t<float> out({(py::ssize_t) self.n_outputs, (py::ssize_t) n_vocab});
    std::memcpy(out.mutable_data(), rows, sizeof(float) * (size_t) self.n_outputs * n_vocab);
    return out;
}

void set_capture(Context & self, const std::vector<int32_t> & layers) {
    llama_context * ctx = self.get();
    const int32_t n_layer = llama_model_n_layer(self.model->model);
    for (int32_t il : layers) {
        if (il < 0 || il > n_layer) {
            throw py::index_error("layer " + std::to_string(il) + " is outside [0, " + std::to_string(n_layer) + "]");
        }
    }
    for (int32_t il = 0; il <= n_layer; ++il) {
        const bool on = std::find(layers.begin(), layers.end(), il) != layers.end();
        const int32_t rc = llama_kvd_capture_layer(ctx, il, on);
        if (on) raise_for_kvd_status(rc, "capture");
    }
    self.capture_layers = layers;
    self.n_captured = 0;
}

py::array_t<float> captured(Context & self, int32_t il) {
    llama_context * ctx = self.get();
    if (std::find(self.capture_layers.begin(), self.capture_layers.end(), il) == self.capture_layers.end()) {
        throw py::value_error("layer " + std::to_string(il) + " is not being captured");
    }
    if (self.n_captured == 0) throw py::value_error("no batch has been decoded since the capture was set");
    const float * rows = llama_kvd_captured(ctx, il);
    if (rows == nullptr) throw DecodeError("llama.cpp has no captured residuals for layer " + std::to_string(il));
    const int32_t n_embd = llama_model_n_embd(self.model->model);
    return py::array_t<float>({(py::ssize_t) self.n_captured, (py::ssize_t) n_embd}, rows);
}

py::tuple read_kv(Context & self, int32_t il, llama_pos pos, llama_seq_id seq) {
    llama_context * ctx = self.get();
    llama_kvd_layer_info info{};
    if (llama_kvd_model_layer_info(self.model->model, il, &info) != LLAMA_KVD_OK) {
        throw py::index_error("layer " + std::to_string(il) + " is out of range");
    }
    py::array_t<float> k(info.n_embd_k_gqa), v(info.n_embd_v_gqa);
    const int32_t rc = llama_kvd_read_kv(ctx, il, seq, pos, k.mutable_data(), v.mutable_data());
    if (rc == LLAMA_KVD_BAD_ARGUMENT)
        throw py::index_error("layer or sequence out of range, or the layer keeps no K/V");
    if (rc == LLAMA_KVD_NOT_HELD) {
        throw py::key_error("no KV cell of layer " + std::to_string(il) + " holds position " + std::to_string(pos) +
                            " of sequence " + std::to_string(seq));
    }
    if (rc != LLAMA_KVD_OK) throw DecodeError("this context's KV cache layout cannot be read back");
    return py::make_tuple(k, v);
}

py::dict memory(const Context & self) {
    llama_kvd_memory mem{};
    llama_kvd_context_memory(self.get(), &mem);
    py::dict d;
    d["model"] = mem.model;
    d["kv"] = mem.context;
    d["compute"] = mem.compute;
    return d;
}

py::dict perf(const Context & self) {
    const llama_perf_context_data p = llama_perf_context(self.get());
    py::dict d;
    d["prefill_ms"] = p.t_p_eval_ms;
    d["decode_ms"] = p.t_eval_ms;
    d["n_prefill"] = p.n_p_eval;
    d["n_decode"] = p.n_eval;
    return d;
}

}  // namespace

void bind_context(py::module_ & m) {
    py::class_<Context> cls(m, "Context");
    cls.def(py::init(&create), py::arg("model"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("n_ubatch"),
            py::arg("n_threads"), py::arg("n_threads_batch"), py::arg("flash_attn"), py::arg("n_seq_max") = 1,
            py::arg("swa_full") = true, py::arg("bounded") = false, py::arg("attention_window") = 0,
            py::arg("batch_invariant") = false,
            "bounded: the KV cache gets exactly n_ctx cells (llama.cpp rounds up to 256 otherwise) and\n"
            "decoding may continue past evicted positions. attention_window > 0: record llama.cpp's\n"
            "attention weights at every decode (see attention_scores). batch_invariant: ggml's CPU\n"
            "matmuls give a token the same numbers whatever else shares its batch (llama-kvd.h).")
        .def("close", &Context::free)
        .def_property_readonly("closed", [](const Context & s) { return s.ctx == nullptr; })
        .def_property_readonly("n_ctx", [](const Context & s) { return llama_n_ctx(s.get()); })
        .def_property_readonly("n_batch", [](const Context & s) { return llama_n_batch(s.get()); })
        .def_property_readonly("n_ubatch", [](const Context & s) { return llama_n_ubatch(s.get()); })
        .def_property_readonly("n_outputs", [](const Context & s) { return s.n_outputs; })
        .def("decode", &decode_array, py::arg("tokens"), py::arg("pos0"), py::arg("seq_id") = 0, py::arg("outputs") = 1,
             "Decode tokens at positions pos0.. ; outputs: 0 none, 1 last token, 2 every token.")
        .def(
            "decode_token",
            [](Context & s, int32_t token, llama_pos pos, llama_seq_id seq) {
                s.get();
                return decode(s, &token, 1, pos, seq, 1);
            },
            py::arg("token"), py::arg("pos"), py::arg("seq_id") = 0)
        .def("set_capture", &set_capture, py::arg("layers"),
             "Capture the residual h^(l) of every decoded token for these layers (empty list: none).")
        .def("captured", &captured, py::arg("layer"),
             "The residuals of a captured layer from the last decode: float32 [n_tokens, n_embd].")
        .def("read_kv", &read_kv, py::arg("layer"), py::arg("pos"), py::arg("seq_id") = 0,
             "The K and V rows stored for (layer, position, sequence), as float32 arrays.")
        .def("logits", &logits_row, py::arg("row") = -1)
        .def("logits_all", &logits_all)
        .def("memory", &memory, "Bytes allocated for model weights, the KV cache and compute buffers.")
        .def("perf", &perf)
        .def("perf_reset", [](Context & s) { llama_perf_context_reset(s.get()); })
        .def("memory_clear", [](Context & s) { llama_memory_clear(llama_get_memory(s.get()), true); })
        .def(
            "seq_rm",
            [](Context & s, llama_seq_id seq, llama_pos p0, llama_pos p1) {
                return llama_memory_seq_rm(llama_get_memory(s.get()), seq, p0, p1);
            },
            py::arg("seq_id"), py::arg("p0"), py::arg("p1"))
        .def(
            "seq_pos_max",
            [](Context & s, llama_seq_id seq) { return llama_memory_seq_pos_max(llama_get_memory(s.get()), seq); },
            py::arg("seq_id") = 0)
        .def(
            "seq_pos_min",
            [](Context & s, llama_seq_id seq) { return llama_memory_seq_pos_min(llama_get_memory(s.get()), seq); },
            py::arg("seq_id") = 0)
        .def(
            "state_seq_get",
            [](Context & s, llama_seq_id seq) {
                llama_context * ctx = s.get();
                std::string data(llama_state_seq_get_size(ctx, seq), '\0');
                data.resize(llama_state_seq_get_data(ctx, reinterpret_cast<uint8_t *>(data.data()), data.size(), seq));
                return py::bytes(data);
            },
            py::arg("seq_id") = 0, "llama.cpp's own serialized state of one sequence (its cells' K/V).")
        .def(
            "state_seq_set",
            [](Context & s, const py::bytes & data, llama_seq_id seq) {
                // Only for bytes that state_seq_get produced: llama.cpp does not validate them fully.
                const std::string_view view(data);
                const size_t used =
                    llama_state_seq_set_data(s.get(), reinterpret_cast<const uint8_t *>(view.data()), view.size(), seq);
                if (used == 0) throw DecodeError("llama.cpp could not load the sequence state\n" + recent_log());
            },
            py::arg("data"), py::arg("seq_id") = 0)
        .def("set_threads", [](Context & s, int32_t n, int32_t n_batch) { llama_set_n_threads(s.get(), n, n_batch); });
    bind_reinject(cls);
    bind_ephemeral(cls);
    bind_attention(cls);
}

}  // namespace pykvd
