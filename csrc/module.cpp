// The Python module nst_fast._C. Importing it runs the TORCH_LIBRARY registrations in ops.cpp (and,
// in CUDA builds, ops_cuda.cu); the operators are then reached as torch.ops.nst_fast.*.

#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "nst_fast compiled operators (torch.ops.nst_fast)";
#ifdef NST_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
