// Makes the shared library importable as stylesdf_fast._C. Importing it runs the static
// TORCH_LIBRARY registrations of ops.cpp; no Python functions are bound (the ops are reached
// through torch.ops.stylesdf_fast), so the heavy pybind11/torch/extension.h headers are not needed.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
