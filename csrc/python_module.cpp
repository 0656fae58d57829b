// The Python module indeed_ext._C: importing it loads this library, which runs the
// TORCH_LIBRARY registrations of the other sources. It defines no Python functions.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
