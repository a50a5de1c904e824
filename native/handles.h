// Shared pieces of the pybind11 binding: owned llama.cpp handles and the C++
// exceptions that module.cpp translates into pykvd.errors classes.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace py = pybind11;

namespace pykvd {

// Each maps to the pykvd.errors class of the same meaning.
struct ClosedError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct ModelLoadError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct DecodeError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct NoRoomError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The last llama.cpp log lines, so that a failure can say what llama.cpp said.
std::string recent_log();
void clear_recent_log();

// A loaded model. Contexts keep a shared_ptr to it, so the weights outlive every
// context made from them even if the Python Model object is closed first.
struct ModelHandle {
    llama_model * model = nullptr;
    explicit ModelHandle(llama_model * m) : model(m) {}
    ~ModelHandle() {
        if (model) llama_model_free(model);
    }
    ModelHandle(const ModelHandle &) = delete;
    ModelHandle & operator=(const ModelHandle &) = delete;
    const llama_vocab * vocab() const { return llama_model_get_vocab(model); }
};

// The Python-facing model: closing it drops this object's share of the handle.
struct Model {
    std::shared_ptr<ModelHandle> handle;
    const ModelHandle & get() const {
        if (!handle) throw ClosedError("model is closed");
        return *handle;
    }
};

// Per-cell sums of llama.cpp's attention weights during the last decode, one vector per layer
// (native/attention.cpp). Filled by a graph callback while llama.cpp computes.
struct AttentionRecorder {
    int32_t window = 32;  // final query rows summed separately (snapkv's observation window)
    std::vector<std::vector<double>> total, last, recent;
    static bool callback(struct ggml_tensor * t, bool ask, void * user_data);
    void clear(int32_t n_layer);
};

// A llama.cpp context. `lock` serialises compute against close() from another
// thread, since compute runs with the GIL released.
struct Context {
    std::shared_ptr<ModelHandle> model;
    llama_context * ctx = nullptr;
    int32_t n_outputs = 0;                         // logits rows produced by the last decode
    std::vector<int32_t> capture_layers;           // residual layers captured at each decode (P1)
    int32_t n_captured = 0;                        // rows captured by the last decode (0: none yet)
    bool bounded = false;                          // exact-size cache that evicts: decode with llama_kvd_decode
    std::unique_ptr<AttentionRecorder> attention;  // set when the context records attention
    std::mutex lock;
    ~Context() { free(); }
    void free() {
        std::lock_guard<std::mutex> guard(lock);
        if (ctx) llama_free(ctx);
        ctx = nullptr;
    }
    llama_context * get() const {
        if (!ctx) throw ClosedError("context is closed");
        return ctx;
    }
};

void bind_model(py::module_ & m);
void bind_context(py::module_ & m);
void bind_sampler(py::module_ & m);
void bind_reinject(py::class_<Context> & cls);
void bind_ephemeral(py::class_<Context> & cls);

// Raises the Python exception for a llama-kvd.h status (nothing for LLAMA_KVD_OK).
void raise_for_kvd_status(int32_t rc, const char * what);
void bind_attention(py::class_<Context> & cls);

}  // namespace pykvd
