"""Builds the C++/CUDA extension nst_fast._C against the torch that is installed.

Install without build isolation so that the extension is compiled for that torch and no second torch
is downloaded:  pip install --no-build-isolation -e .

Environment:
  NST_FAST_BUILD_EXT=0   install the pure-Python package only (nst_fast falls back to PyTorch ops)
  NST_FAST_CUDA=0|1      force the CUDA sources off or on (default: on when torch has CUDA and nvcc exists)
  TORCH_CUDA_ARCH_LIST   CUDA architectures to build for (torch's default: those of the visible GPUs)
"""

import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("NST_FAST_BUILD_EXT", "1") != "0":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/module.cpp", "csrc/ops.cpp"]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    want_cuda = os.environ.get("NST_FAST_CUDA", "auto")
    with_cuda = bool(cuda_sources) and (
        want_cuda == "1" or (want_cuda == "auto" and torch.version.cuda is not None and CUDA_HOME is not None)
    )
    cxx_flags = ["-O3", "-std=c++17"]
    if with_cuda:
        extension = CUDAExtension(
            "nst_fast._C",
            sources + cuda_sources,
            define_macros=[("NST_FAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
        )
    else:
        extension = CppExtension("nst_fast._C", sources, extra_compile_args={"cxx": cxx_flags})
    ext_modules = [extension]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
