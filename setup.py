"""Builds the C++/CUDA extension nst_fast._C against the torch that is installed.

Install without build isolation so that the extension is compiled for that torch and no second torch
is downloaded:  pip install --no-build-isolation -e .

Environment:
  NST_FAST_BUILD_EXT=0   install the pure-Python package only (nst_fast falls back to PyTorch ops)
  NST_FAST_CUDA=0|1      force the CUDA sources off or on (default: on when torch has CUDA and nvcc exists)
  TORCH_CUDA_ARCH_LIST   CUDA architectures to build for, as compute capabilities: "9.0" for an H100/H200,
                         "8.0;8.6;8.9;9.0+PTX" for several (+PTX adds PTX that newer GPUs compile at load).
                         Unset, torch builds for the GPUs visible at build time; with none visible it
                         cannot choose, and the build stops asking for it. The bf16/fp16 tensor-core
                         forward is compiled for 8.0 and newer; older architectures run those inputs in
                         float32.

The C++ standard is torch's (its headers set what they need); it is not forced here.
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
    cxx_flags = ["-O3"]
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        # torch would pick the architectures of the visible GPUs, and fails obscurely with none.
        raise SystemExit(
            "setup.py: no GPU visible to build the CUDA kernels for: set TORCH_CUDA_ARCH_LIST "
            '(e.g. "9.0"), or NST_FAST_CUDA=0 for a CPU-only build'
        )
    if with_cuda:
        extension = CUDAExtension(
            "nst_fast._C",
            sources + cuda_sources,
            define_macros=[("NST_FAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        )
    else:
        extension = CppExtension("nst_fast._C", sources, extra_compile_args={"cxx": cxx_flags})
    ext_modules = [extension]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
