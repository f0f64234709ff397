// The Python module nst_fast._C: an empty module whose import loads this library and so runs the
// TORCH_LIBRARY registrations in ops.cpp (and, in CUDA builds, ops_cuda.cu); the operators are then
// reached as torch.ops.nst_fast.*. Whether CUDA kernels were built is asked of the dispatcher
// (nst_fast/_ext.py), so the module needs no binding library: only Python's C API.

#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "nst_fast compiled operators (torch.ops.nst_fast)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
