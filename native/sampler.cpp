// llama.cpp's sampler chain: penalties -> top-k -> top-p -> min-p -> temperature -> draw.
// Values are validated in pykvd.sampling before they reach this file.
#include "handles.h"

namespace pykvd {

namespace {

struct Sampler {
    llama_sampler * chain = nullptr;
    ~Sampler() {
        if (chain) llama_sampler_free(chain);
    }
};

std::unique_ptr<Sampler> create(const Model & model, float temperature, int32_t top_k, float top_p, float min_p,
                                float repeat_penalty, int32_t repeat_last_n, uint32_t seed) {
    const int32_t n_vocab = llama_vocab_n_tokens(model.get().vocab());
    auto s = std::make_unique<Sampler>();
    llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    s->chain = llama_sampler_chain_init(params);
    if (repeat_penalty != 1.0f && repeat_last_n != 0) {
        llama_sampler_chain_add(s->chain,
                                llama_sampler_init_penalties(n_vocab, repeat_last_n, repeat_penalty, 0.0f, 0.0f));
    }
    if (temperature <= 0.0f) {
        llama_sampler_chain_add(s->chain, llama_sampler_init_greedy());
        return s;
    }
    if (top_k > 0) llama_sampler_chain_add(s->chain, llama_sampler_init_top_k(top_k));
    if (top_p < 1.0f) llama_sampler_chain_add(s->chain, llama_sampler_init_top_p(top_p, 1));
    if (min_p > 0.0f) llama_sampler_chain_add(s->chain, llama_sampler_init_min_p(min_p, 1));
    llama_sampler_chain_add(s->chain, llama_sampler_init_temp(temperature));
    llama_sampler_chain_add(s->chain, llama_sampler_init_dist(seed));
    return s;
}

llama_token sample(Sampler & self, Context & ctx, int32_t row) {
    ctx.get();
    if (ctx.n_outputs == 0) throw py::value_error("the last batch produced no logits");
    if (row < -ctx.n_outputs || row >= ctx.n_outputs) throw py::index_error("logits row out of range");
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> guard(ctx.lock);
    if (!ctx.ctx) throw ClosedError("context is closed");
    return llama_sampler_sample(self.chain, ctx.ctx, row);
}

// The same steps as llama_sampler_sample, over logits the caller holds (a P4 decode returns them).
llama_token sample_logits(Sampler & self, const py::array_t<float, py::array::c_style> & logits) {
    if (logits.ndim() != 1) throw py::value_error("logits must be a 1-D array");
    std::vector<llama_token_data> cur(logits.shape(0));
    const float * data = logits.data();
    for (llama_token id = 0; id < (llama_token) cur.size(); ++id) cur[id] = llama_token_data{id, data[id], 0.0f};
    llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
    llama_sampler_apply(self.chain, &cur_p);
    if (cur_p.selected < 0 || cur_p.selected >= (int64_t) cur_p.size)
        throw std::runtime_error("sampler selected nothing");
    const llama_token token = cur_p.data[cur_p.selected].id;
    llama_sampler_accept(self.chain, token);
    return token;
}

}  // namespace

void bind_sampler(py::module_ & m) {
    py::class_<Sampler>(m, "Sampler")
        .def(py::init(&create), py::arg("model"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
             py::arg("min_p"), py::arg("repeat_penalty"), py::arg("repeat_last_n"), py::arg("seed"))
        .def("sample", &sample, py::arg("context"), py::arg("row") = -1,
             "Sample from a logits row of the context's last batch and record the token.")
        .def("sample_logits", &sample_logits, py::arg("logits"),
             "Sample from a logits row held in an array and record the token.")
        .def("accept", [](Sampler & s, llama_token t) { llama_sampler_accept(s.chain, t); })
        .def("reset", [](Sampler & s) { llama_sampler_reset(s.chain); });
}

}  // namespace pykvd
