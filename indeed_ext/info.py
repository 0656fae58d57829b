"""python -m indeed_ext.info: what was built, for which torch, CUDA and GPU architectures, which
backends can run here, why the others cannot, and what backend="auto" picks."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys

import torch

from . import __version__, _extension, ops, reference

OP = "_six_head_loss_forward"  # the op whose kernels are checked: every build registers every op
BACKENDS = {
    "cpu": "C++ kernels, CPU tensors",
    "cuda": "CUDA C++ kernels",
    "triton": "Triton kernels, CUDA tensors",
    "reference": "PyTorch ops, any device",
}


def gpu_archs() -> list[tuple[int, int]]:
    """Compute capabilities of the visible GPUs."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def arch_runs(archs: str, capability: tuple[int, int]) -> bool:
    """Whether a build for TORCH_CUDA_ARCH_LIST archs ("8.0;9.0+PTX") runs on a GPU of capability.

    A cubin for X.Y runs on X.Z with Z >= Y; PTX for X.Y is compiled by the driver for any later GPU.
    """
    for major, minor, ptx in re.findall(r"(\d+)\.(\d+)\w?(\+PTX)?", archs):
        built = (int(major), int(minor))
        if (built[0] == capability[0] and built[1] <= capability[1]) or (ptx and built <= capability):
            return True
    return False


def _cuda_unusable() -> str | None:
    info = _extension.build_info
    if torch.version.cuda is None:
        return "this torch has no CUDA"
    if not ops._has_kernel(OP, "CUDA"):
        return "built without CUDA kernels (INDEED_CUDA=0, or no nvcc when it was built)"
    capabilities = gpu_archs()
    if not capabilities:
        return "no CUDA GPU visible"
    missing = [c for c in capabilities if info and info.cuda_archs and not arch_runs(info.cuda_archs, c)]
    if missing:
        return f"built for {info.cuda_archs}, which does not run on sm_{missing[0][0]}{missing[0][1]}"
    return None


def _triton_unusable() -> str | None:
    reason = ops.triton_unavailable()
    if reason or gpu_archs():
        return reason
    import triton  # noqa: F401  (reads TRITON_INTERPRET)

    if not triton.knobs.runtime.interpret:
        return "no CUDA GPU visible (CPU tensors run through the Triton interpreter with TRITON_INTERPRET=1, slowly)"
    return None


def backends() -> dict[str, str | None]:
    """{backend: why it cannot run here, or None when it can}."""
    kernels_missing = None if _extension.loaded else "the compiled kernels did not load (above)"
    return {
        "cpu": kernels_missing or (None if ops._has_kernel(OP, "CPU") else "built without CPU kernels"),
        "cuda": kernels_missing or _cuda_unusable(),
        "triton": _triton_unusable(),
        "reference": None,
    }


def auto_choice(device: str) -> str:
    """The backend that backend="auto" picks for tensors on device."""
    namespace = ops.resolve_backend("auto", torch.device(device), OP)
    if namespace is reference:
        return "reference"
    return "triton" if namespace is torch.ops.indeed_triton else device


def report() -> str:
    gpus = ", ".join(f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})" for i, (major, minor) in enumerate(gpu_archs()))
    triton = ops.triton_unavailable() or importlib.metadata.version("triton")
    kernels = "loaded" if _extension.loaded else f"did not load: {_extension.load_error}"
    lines = [
        f"indeed-ext {__version__} at {os.path.dirname(_extension.__file__)}",
        f"built for:  {_extension.built_for()}",
        f"running on: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton}, "
        f"Python {platform.python_version()}; GPUs: {gpus or 'none visible'}",
        f"kernels:    {kernels}",
        "",
        f"{'backend':<10} {'':<29} usable here",
    ]
    lines += [f"{name:<10} {BACKENDS[name]:<29} {'yes' if reason is None else 'no: ' + reason}"
              for name, reason in backends().items()]
    devices = ["cpu"] + (["cuda"] if gpu_archs() else [])
    lines += ["", 'backend="auto": ' + ", ".join(f"{d} tensors -> {auto_choice(d)}" for d in devices)]
    if not _extension.loaded:
        lines.append(f"rebuild for this torch: {_extension.rebuild_command()}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
