// Makes the shared library importable as the Python module `fastmim._C`; importing it runs the static
// operator registrations. The CMake build (for C++ users and torch.ops.load_library) leaves this file out.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastmim's compiled operators", -1, nullptr};
  return PyModule_Create(&module);
}
}
