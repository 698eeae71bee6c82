// Python module entry for dsfd._C. The ops themselves are registered with
// TORCH_LIBRARY_FRAGMENT(dsfd, ...) in csrc/ops/*.cpp; importing this module
// runs those static registrations.
#include <Python.h>

#include <torch/library.h>

namespace dsfd {

bool built_with_cuda() {
#ifdef DSFD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("_built_with_cuda() -> bool", &built_with_cuda);
}

}  // namespace dsfd

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "dsfd C++/CUDA kernels (torch.ops.dsfd)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
