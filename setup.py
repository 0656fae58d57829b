"""Builds indeed_ext._C: CPU kernels always, CUDA kernels when INDEED_CUDA allows.

INDEED_CUDA=auto (default) builds the CUDA sources when torch has CUDA and nvcc is
found; 1 requires them; 0 skips them. TORCH_CUDA_ARCH_LIST defaults to the visible GPUs'
architectures, or to WHEEL_ARCHS when none is visible.

The version is VERSION plus a local label naming the torch and CUDA the kernels were built
for (0.1.0+torch2.14cu130, 0.1.0+torch2.14cpu), as flash-attention and vLLM label their
wheels. The sdist and builds from it carry no label: pip rejects metadata built from an
index's sdist whose version differs from the one in the sdist's name.

Each build writes indeed_ext/_build_info.json beside _C (and into wheels; not in git or the
sdist): the version, the torch, CUDA and architectures built for, which `import indeed_ext`
and `python -m indeed_ext.info` report, and the op schemas of csrc/ops.cpp, which the
Triton backend defines when _C does not load.
"""
import ast
import glob
import json
import os
import re
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "tools"))
from cuda_env import find_cuda_home, pip_cuda_dirs  # noqa: E402

VERSION = "0.1.0"
# Data-centre and workstation GPUs of today that nvcc 13 and torch's cu13 wheels support: T4 (7.5),
# A100 (8.0), RTX 30xx/A6000 (8.6), L4/L40/RTX 40xx (8.9), H100/H200 (9.0), B200 (10.0) and RTX 50xx/
# RTX PRO 6000 (12.0), whose PTX also serves later GPUs.
WHEEL_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
BUILD_INFO = "_build_info.json"


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


def visible_gpu_archs(torch):
    """The visible GPUs' architectures as TORCH_CUDA_ARCH_LIST writes them ("8.9;9.0"), or None."""
    if not torch.cuda.is_available():
        return None
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))


def extensions(torch, with_cuda):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/python_module.cpp", "csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard comes from torch (C++20 for torch>=2.10). -fno-trapping-math, as torch
    # itself builds: without it GCC keeps the selects of the CPU kernels' loops as branches
    # and does not vectorise them (NaN and Inf semantics are unchanged). -ffp-contract=off: the
    # kernels' AVX2/AVX-512 clones must round p = fa * fb as the reference does (no FMA), or
    # p - min(p) is not 0 at the minimum.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    include_dirs = [os.path.join(HERE, "csrc")]
    if with_cuda:
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


def version(torch, with_cuda):
    if "sdist" in sys.argv or os.path.exists(os.path.join(HERE, "PKG-INFO")):  # making the sdist, or built from it
        return VERSION
    torch_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    device = "cu" + torch.version.cuda.replace(".", "") if with_cuda else "cpu"
    return f"{VERSION}+torch{torch_minor}{device}"


def op_schemas():
    """{name: schema} of the m.def(...) calls in csrc/ops.cpp: adjacent string literals joined, and the
    string macros it #defines (one literal each) expanded."""
    literal = r'"(?:[^"\\]|\\.)*"'
    with open(os.path.join(HERE, "csrc", "ops.cpp")) as f:
        source = f.read()
    macros = {name: ast.literal_eval(value) for name, value in re.findall(rf"#define\s+(\w+)\s+({literal})", source)}
    piece = literal + "|" + "|".join(map(re.escape, macros)) if macros else literal
    calls = re.findall(rf"m\.def\(\s*((?:(?:{piece})\s*)+)\)", source)
    schemas = ["".join(macros[s] if s in macros else ast.literal_eval(s) for s in re.findall(piece, call))
               for call in calls]
    return {schema.split("(", 1)[0]: schema for schema in schemas}


def build_info(torch, with_cuda, package_version):
    return json.dumps({
        "version": package_version,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if with_cuda else None,  # null: CPU kernels only
        "cuda_archs": os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else None,
        "schemas": op_schemas(),
    }, indent=1) + "\n"


def build_ext_class(info):
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(no_python_abi_suffix=False)):
        """Builds _C, then writes the build record beside it: in the build folder and, in place, in the source."""

        def run(self):
            super().run()
            folders = [os.path.join(self.build_lib, "indeed_ext")]
            if self.inplace:
                folders.append(self.get_finalized_command("build_py").get_package_dir("indeed_ext"))
            for folder in folders:
                with open(os.path.join(folder, BUILD_INFO), "w") as f:
                    f.write(info)

    return BuildExt


def main():
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    import torch

    with_cuda = want_cuda(torch)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = visible_gpu_archs(torch) or WHEEL_ARCHS
    package_version = version(torch, with_cuda)
    setup(
        version=package_version,
        ext_modules=extensions(torch, with_cuda),
        cmdclass={"build_ext": build_ext_class(build_info(torch, with_cuda, package_version))},
    )


main()
