"""Builds indeed_ext._C: CPU kernels always, CUDA kernels when INDEED_CUDA allows.

INDEED_CUDA=auto (default) builds the CUDA sources when torch has CUDA and nvcc is
found; 1 requires them; 0 skips them. With no GPU visible, TORCH_CUDA_ARCH_LIST
defaults to the architectures a wheel should cover.
"""
import glob
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from cuda_env import find_cuda_home, pip_cuda_dirs  # noqa: E402

WHEEL_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def want_cuda(torch):
    mode = os.environ.get("INDEED_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"INDEED_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    ok = torch.version.cuda is not None and os.environ.get("CUDA_HOME") is not None
    if mode == "1" and not ok:
        raise SystemExit("INDEED_CUDA=1 but torch has no CUDA or nvcc/CUDA_HOME was not found")
    return ok


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/python_module.cpp", "csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard comes from torch (C++20 for torch>=2.10). -fno-trapping-math, as torch
    # itself builds: without it GCC keeps the selects of the CPU kernels' loops as branches
    # and does not vectorise them (NaN and Inf semantics are unchanged). -ffp-contract=off: the
    # kernels' AVX2/AVX-512 clones must round p = fa * fb as the reference does (no FMA), or
    # p - min(p) is not 0 at the minimum.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    include_dirs = [os.path.join(here, "csrc")]
    if want_cuda(torch):
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = WHEEL_ARCHS
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3", "-lineinfo"]  # no fast-math: kernels are tested against reference.py
        return [
            CUDAExtension(
                "indeed_ext._C",
                sources,
                include_dirs=include_dirs + pip_cuda_dirs("include"),
                extra_compile_args={"cxx": cxx + ["-DINDEED_WITH_CUDA"], "nvcc": nvcc + ["-DINDEED_WITH_CUDA"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "indeed_ext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(no_python_abi_suffix=False)


setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext_class()})
