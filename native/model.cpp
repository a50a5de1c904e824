// Model loading, metadata, tokenizer and chat template.
#include "handles.h"

#include "llama-kvd.h"

#include <vector>

namespace pykvd {

namespace {

std::string meta_string(const llama_model * model, const char * key) {
    std::vector<char> buf(256);
    int32_t n = llama_model_meta_val_str(model, key, buf.data(), buf.size());
    if (n < 0) return {};
    if ((size_t) n >= buf.size()) {
        buf.resize(n + 1);
        llama_model_meta_val_str(model, key, buf.data(), buf.size());
    }
    return std::string(buf.data());
}

py::dict metadata(const Model & self) {
    const llama_model * model = self.get().model;
    py::dict out;
    std::vector<char> key(512), val(4096);
    for (int32_t i = 0; i < llama_model_meta_count(model); ++i) {
        if (llama_model_meta_key_by_index(model, i, key.data(), key.size()) < 0) continue;
        int32_t n = llama_model_meta_val_str_by_index(model, i, val.data(), val.size());
        if (n < 0) continue;
        if ((size_t) n >= val.size()) {
            val.resize(n + 1);
            llama_model_meta_val_str_by_index(model, i, val.data(), val.size());
        }
        out[py::str(key.data())] = py::str(val.data());
    }
    return out;
}

py::dict layer_info(const Model & self, int32_t il) {
    llama_kvd_layer_info info{};
    if (llama_kvd_model_layer_info(self.get().model, il, &info) != 0) {
        throw py::index_error("layer " + std::to_string(il) + " is out of range");
    }
    py::dict d;
    d["n_head"] = info.n_head;
    d["n_head_kv"] = info.n_head_kv;
    d["head_dim_k"] = info.n_embd_head_k;
    d["head_dim_v"] = info.n_embd_head_v;
    d["n_embd_k_gqa"] = info.n_embd_k_gqa;
    d["n_embd_v_gqa"] = info.n_embd_v_gqa;
    d["is_swa"] = info.is_swa;
    d["has_kv"] = info.has_kv;
    return d;
}

py::array_t<int32_t> tokenize(const Model & self, const std::string & text, bool add_special, bool parse_special) {
    const llama_vocab * vocab = self.get().vocab();
    std::vector<llama_token> tokens(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(),
                               add_special, parse_special);
    if (n < 0) {
        tokens.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(),
                           add_special, parse_special);
    }
    if (n < 0) throw std::runtime_error("tokenization failed");
    return py::array_t<int32_t>(n, tokens.data());
}

void check_token(const llama_vocab * vocab, llama_token token) {
    if (token < 0 || token >= llama_vocab_n_tokens(vocab)) {
        throw py::index_error("token id " + std::to_string(token) + " is outside the vocabulary");
    }
}

py::bytes token_to_piece(const Model & self, llama_token token, bool special) {
    const llama_vocab * vocab = self.get().vocab();
    check_token(vocab, token);
    std::vector<char> buf(64);
    int32_t n = llama_token_to_piece(vocab, token, buf.data(), (int32_t) buf.size(), 0, special);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(vocab, token, buf.data(), (int32_t) buf.size(), 0, special);
    }
    return py::bytes(buf.data(), std::max(n, 0));
}

py::bytes detokenize(const Model & self, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                     bool remove_special, bool unparse_special) {
    const llama_vocab * vocab = self.get().vocab();
    auto view = tokens.unchecked<1>();
    for (py::ssize_t i = 0; i < view.shape(0); ++i) check_token(vocab, view(i));
    std::vector<char> buf(view.shape(0) * 8 + 16);
    int32_t n = llama_detokenize(vocab, tokens.data(), (int32_t) view.shape(0), buf.data(), (int32_t) buf.size(),
                                 remove_special, unparse_special);
    if (n < 0) {
        buf.resize(-n);
        n = llama_detokenize(vocab, tokens.data(), (int32_t) view.shape(0), buf.data(), (int32_t) buf.size(),
                             remove_special, unparse_special);
    }
    return py::bytes(buf.data(), std::max(n, 0));
}

std::string apply_chat_template(const Model & self, py::object tmpl, const py::list & messages, bool add_assistant) {
    std::string tmpl_text;
    if (tmpl.is_none()) {
        const char * own = llama_model_chat_template(self.get().model, nullptr);
        if (own == nullptr) throw py::value_error("the model has no chat template");
        tmpl_text = own;
    } else {
        tmpl_text = tmpl.cast<std::string>();
    }
    std::vector<std::string> roles, contents;
    for (const auto & item : messages) {
        auto pair = item.cast<std::pair<std::string, std::string>>();
        roles.push_back(pair.first);
        contents.push_back(pair.second);
    }
    std::vector<llama_chat_message> chat;
    size_t total = 0;
    for (size_t i = 0; i < roles.size(); ++i) {
        chat.push_back({roles[i].c_str(), contents[i].c_str()});
        total += roles[i].size() + contents[i].size();
    }
    std::vector<char> buf(total * 2 + 256);
    int32_t n = llama_chat_apply_template(tmpl_text.c_str(), chat.data(), chat.size(), add_assistant, buf.data(),
                                          (int32_t) buf.size());
    if (n > (int32_t) buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl_text.c_str(), chat.data(), chat.size(), add_assistant, buf.data(),
                                      (int32_t) buf.size());
    }
    if (n < 0) throw py::value_error("llama.cpp does not support this chat template");
    return std::string(buf.data(), n);
}

Model load(const std::string & path, int32_t n_gpu_layers, bool use_mmap, bool use_extra_bufts) {
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = n_gpu_layers;
    params.use_extra_bufts = use_extra_bufts;
    if (!use_mmap) params.load_mode = LLAMA_LOAD_MODE_NONE;
    clear_recent_log();
    llama_model * model;
    {
        py::gil_scoped_release nogil;
        model = llama_model_load_from_file(path.c_str(), params);
    }
    if (model == nullptr) {
        throw ModelLoadError("llama.cpp could not load " + path + "\n" + recent_log());
    }
    return Model{std::make_shared<ModelHandle>(model)};
}

}  // namespace

void bind_model(py::module_ & m) {
    py::class_<Model>(m, "Model")
        .def(py::init(&load), py::arg("path"), py::arg("n_gpu_layers") = 0, py::arg("use_mmap") = true,
             py::arg("use_extra_bufts") = false)
        .def("close", [](Model & self) { self.handle.reset(); })
        .def(
            "share",
            [](const Model & self) {
                self.get();
                return Model{self.handle};
            },
            "Another reference to the same weights, closed independently.")
        .def_property_readonly("closed", [](const Model & self) { return !self.handle; })
        .def_property_readonly("n_layer", [](const Model & s) { return llama_model_n_layer(s.get().model); })
        .def_property_readonly("n_embd", [](const Model & s) { return llama_model_n_embd(s.get().model); })
        .def_property_readonly("n_head", [](const Model & s) { return llama_model_n_head(s.get().model); })
        .def_property_readonly("n_head_kv", [](const Model & s) { return llama_model_n_head_kv(s.get().model); })
        .def_property_readonly("n_swa", [](const Model & s) { return llama_model_n_swa(s.get().model); })
        .def_property_readonly("is_recurrent",
                               [](const Model & s) {
                                   const llama_model * m = s.get().model;
                                   return llama_model_is_recurrent(m) || llama_model_is_hybrid(m);
                               })
        .def_property_readonly("n_ctx_train", [](const Model & s) { return llama_model_n_ctx_train(s.get().model); })
        .def_property_readonly("n_params", [](const Model & s) { return llama_model_n_params(s.get().model); })
        .def_property_readonly("size", [](const Model & s) { return llama_model_size(s.get().model); })
        .def_property_readonly("n_vocab", [](const Model & s) { return llama_vocab_n_tokens(s.get().vocab()); })
        .def_property_readonly("description",
                               [](const Model & s) {
                                   char buf[256];
                                   llama_model_desc(s.get().model, buf, sizeof(buf));
                                   return std::string(buf);
                               })
        .def("meta", [](const Model & s, const std::string & key) { return meta_string(s.get().model, key.c_str()); })
        .def("metadata", &metadata)
        .def("layer_info", &layer_info, py::arg("layer"))
        .def("chat_template",
             [](const Model & s) -> py::object {
                 const char * t = llama_model_chat_template(s.get().model, nullptr);
                 return t ? py::object(py::str(t)) : py::object(py::none());
             })
        .def("apply_chat_template", &apply_chat_template, py::arg("template"), py::arg("messages"),
             py::arg("add_assistant"))
        .def("tokenize", &tokenize, py::arg("text"), py::arg("add_special"), py::arg("parse_special"))
        .def("token_to_piece", &token_to_piece, py::arg("token"), py::arg("special"))
        .def("detokenize", &detokenize, py::arg("tokens"), py::arg("remove_special"), py::arg("unparse_special"))
        .def_property_readonly("bos", [](const Model & s) { return llama_vocab_bos(s.get().vocab()); })
        .def_property_readonly("eos", [](const Model & s) { return llama_vocab_eos(s.get().vocab()); })
        .def_property_readonly("eot", [](const Model & s) { return llama_vocab_eot(s.get().vocab()); })
        .def_property_readonly("add_bos", [](const Model & s) { return llama_vocab_get_add_bos(s.get().vocab()); })
        .def("is_eog", [](const Model & s, llama_token t) { return llama_vocab_is_eog(s.get().vocab(), t); });
}

}  // namespace pykvd
