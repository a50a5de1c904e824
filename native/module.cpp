// pykvd._native: a thin pybind11 binding over llama.h and llama-kvd.h.
// Policy lives in Python; this module converts arrays, releases the GIL while
// llama.cpp computes, and turns every C-side failure into a Python exception.
#include "handles.h"

#include "llama-kvd.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>

namespace pykvd {

namespace {

std::mutex log_mutex;
std::deque<std::string> log_lines;
bool log_to_stderr = false;
constexpr size_t kLogKeep = 40;

void on_log(ggml_log_level level, const char * text, void *) {
    if (text == nullptr) return;
    std::lock_guard<std::mutex> guard(log_mutex);
    if (log_to_stderr) std::fputs(text, stderr);
    if (level == GGML_LOG_LEVEL_CONT && !log_lines.empty()) {
        log_lines.back() += text;
        return;
    }
    log_lines.emplace_back(text);
    while (log_lines.size() > kLogKeep) log_lines.pop_front();
}

using Bytes = py::array_t<uint8_t, py::array::c_style>;

py::array_t<float> dequantize(int type, const Bytes & raw, int64_t n) {
    if (type < 0 || type >= GGML_TYPE_COUNT) throw py::value_error("unknown ggml type " + std::to_string(type));
    const ggml_type t = (ggml_type) type;
    const auto * traits = ggml_get_type_traits(t);
    if (traits->blck_size <= 0 || (t != GGML_TYPE_F32 && traits->to_float == nullptr)) {
        throw py::value_error(std::string("ggml type ") + traits->type_name + " has no conversion to float");
    }
    if (raw.ndim() != 1 || n <= 0 || n % traits->blck_size != 0 || (size_t) raw.size() != ggml_row_size(t, n)) {
        throw py::value_error("raw must hold a whole number of blocks: the bytes of n_values values");
    }
    py::array_t<float> out(n);
    if (t == GGML_TYPE_F32) {
        std::memcpy(out.mutable_data(), raw.data(), (size_t) n * sizeof(float));
    } else {
        traits->to_float(raw.data(), out.mutable_data(), n);
    }
    return out;
}

}  // namespace

std::string recent_log() {
    std::lock_guard<std::mutex> guard(log_mutex);
    std::string out;
    for (const auto & line : log_lines) out += line;
    return out;
}

void clear_recent_log() {
    std::lock_guard<std::mutex> guard(log_mutex);
    log_lines.clear();
}

}  // namespace pykvd

using namespace pykvd;

PYBIND11_MODULE(_native, m) {
    m.doc() = "pykvd's binding over llama.cpp (llama.h and llama-kvd.h)";

    // Exceptions come from pykvd.errors so callers catch one hierarchy.
    py::module_ errors = py::module_::import("pykvd.errors");
    // Deliberately leaked references: they must outlive interpreter teardown.
    static PyObject * closed_cls = py::object(errors.attr("SessionClosedError")).release().ptr();
    static PyObject * load_cls = py::object(errors.attr("InvalidModelError")).release().ptr();
    static PyObject * decode_cls = py::object(errors.attr("DecodeError")).release().ptr();
    static PyObject * room_cls = py::object(errors.attr("ContextOverflowError")).release().ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ClosedError & e) {
            PyErr_SetString(closed_cls, e.what());
        } catch (const ModelLoadError & e) {
            PyErr_SetString(load_cls, e.what());
        } catch (const NoRoomError & e) {
            PyErr_SetString(room_cls, e.what());
        } catch (const DecodeError & e) {
            PyErr_SetString(decode_cls, e.what());
        }
    });

    llama_log_set(on_log, nullptr);
    llama_backend_init();

    m.def(
        "set_log_to_stderr",
        [](bool on) {
            std::lock_guard<std::mutex> guard(log_mutex);
            log_to_stderr = on;
        },
        "Echo llama.cpp's log to stderr (it is always kept for error messages).");
    m.def("recent_log", &recent_log, "The last lines llama.cpp logged.");
    m.def("system_info", [] { return std::string(llama_print_system_info()); });
    m.def("version", [] { return std::string(llama_version()); });
    m.def(
        "arch_known", [](const std::string & arch) { return llama_kvd_arch_known(arch.c_str()); },
        "True if this llama.cpp build can load the GGUF architecture name.");
    m.def(
        "kvd_architectures",
        [] {
            py::list names;
            for (const char * const * name = llama_kvd_architectures(); *name != nullptr; ++name) names.append(*name);
            return py::tuple(names);
        },
        "The GGUF architectures whose graphs carry the llama-kvd layer hooks (capture, re-injection, kvdirect).");
    m.def(
        "kvd_unsupported_reason",
        [](const std::string & arch) -> py::object {
            const char * reason = llama_kvd_arch_unsupported_reason(arch.c_str());
            return reason == nullptr ? py::object(py::none()) : py::object(py::str(reason));
        },
        "None if the architecture is supported, else why capture and re-injection are not available for it.");
    m.def("supports_gpu_offload", &llama_supports_gpu_offload);
    m.def("dequantize", &dequantize, py::arg("ggml_type"), py::arg("raw"), py::arg("n_values"),
          "n_values floats from raw, a whole number of ggml_type blocks, by ggml's own conversion.");

    bind_model(m);
    bind_context(m);
    bind_sampler(m);
}
