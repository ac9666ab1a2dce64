// GreenMIM's own minimal `detectron2._C` extension (CPU only).
//
// Why: the pb1-detectron2==0.6 sdist on PyPI ships without detectron2's C++ sources, but
// several v0.6 modules run `from detectron2 import _C` at import time. Those modules only touch
// the C++ ops when a rotated-box, ROIAlignRotated, deformable-conv or fast-COCO-eval path is
// actually called, which Mask R-CNN / FPN training, inference and
// COCOEvaluator(use_fast_impl=False) never do. So this module provides only the build
// information that collect_env asks for, and turns any other attribute lookup into a clear
// AttributeError (PEP 562 module __getattr__) instead of a bare "has no attribute".
// Written from scratch for GreenMIM; it contains no detectron2 code.

// Only pybind11 (vendored in torch's include dir): the module touches no tensors, and skipping
// <torch/extension.h> cuts the compile from ~40 s to a few seconds.
#include <pybind11/pybind11.h>

#include <string>

namespace {

std::string compiler_version() {
#if defined(__clang__)
  return "clang " + std::to_string(__clang_major__) + "." + std::to_string(__clang_minor__);
#elif defined(__GNUC__)
  return "GCC " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__);
#elif defined(_MSC_VER)
  return "MSVC " + std::to_string(_MSC_FULL_VER);
#else
  return "unknown compiler";
#endif
}

[[noreturn]] void missing_op(const std::string& name) {
  throw pybind11::attribute_error(
      "detectron2._C." + name +
      " is not available: this detectron2 was built by GreenMIM's offline route "
      "(scripts/install_detectron2.sh) with a minimal CPU-only _C that has no custom ops "
      "(rotated boxes, ROIAlignRotated, deformable conv, fast COCO eval). Use "
      "COCOEvaluator(use_fast_impl=False), or install detectron2 from its official source "
      "(DETECTRON2_SRC=/path/to/detectron2 make setup).");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "GreenMIM minimal detectron2._C (CPU only, no custom ops)";
  m.def("get_compiler_version", &compiler_version, "compiler used to build this module");
  m.def("get_cuda_version", []() { return std::string("not available"); },
        "CUDA version used to build this module (none: CPU-only build)");
  m.def("has_cuda", []() { return false; }, "whether this module was built with CUDA");
  // Only reached for names not defined above (Python checks the module dict first).
  m.def("__getattr__", [](const std::string& name) -> pybind11::object { missing_op(name); });
}
