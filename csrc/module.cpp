// Python module `hald_ext._C`. Importing it loads this library, whose static initialisers register
// the `hald` operator namespace; the ops themselves are called through torch.ops.hald.*.
#include <Python.h>
#include <torch/library.h>

#ifndef HALD_WITH_CUDA
#define HALD_WITH_CUDA 0
#endif

// The namespace is declared here once; each op file adds its schemas with TORCH_LIBRARY_FRAGMENT.
TORCH_LIBRARY(hald, m) {}

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "hald_ext compiled kernels", -1, nullptr};
  PyObject* mod = PyModule_Create(&module_def);
  if (mod == nullptr) return nullptr;
  // Which backends this build carries; hald_ext.build_info() reports them.
  PyModule_AddIntConstant(mod, "WITH_CUDA", HALD_WITH_CUDA);
  PyModule_AddIntConstant(mod, "ABI_VERSION", 4);
  return mod;
}
