"""Loads indeed_ext._C, the compiled CPU and CUDA kernels of torch.ops.indeed, and its build record.

A _C that is missing, or that fails to load (most often "undefined symbol": built for another
torch), does not break ``import indeed_ext``: it warns once, torch.ops.indeed stays undefined,
and backend="auto" runs every op on Triton (CUDA tensors) or the reference (the others).
"""
from __future__ import annotations

import importlib
import json
import os
import types
import warnings

import torch


class KernelsNotLoadedWarning(UserWarning):
    """indeed_ext._C did not load: the ops run on Triton and the reference instead."""


def _load_build_info():
    """What setup.py recorded about the build of _C (version, torch_version, cuda_version, cuda_archs, schemas)."""
    try:
        with open(os.path.join(os.path.dirname(__file__), "_build_info.json")) as f:
            return types.SimpleNamespace(**json.load(f))
    except FileNotFoundError:  # a source tree that was never built
        return None


def _load_kernels() -> str | None:
    """Import _C (it registers torch.ops.indeed); the reason it did not load, or None."""
    try:
        importlib.import_module(f"{__package__}._C")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}._C":
            raise
        return "indeed_ext._C is not built"
    except (ImportError, OSError) as e:  # undefined symbols, a missing shared library
        return f"{type(e).__name__}: {e}"
    return None


def source_root() -> str | None:
    """The source tree this package runs from (a checkout with setup.py), or None when installed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isfile(os.path.join(root, "setup.py")) else None


def rebuild_command() -> str:
    """The command that builds _C against the running torch."""
    root = source_root()
    if root:
        return f"make install, or pip install --no-build-isolation -e {root}"
    return "pip install --no-build-isolation --no-deps --force-reinstall <indeed-ext sdist or source folder>"


def built_for() -> str:
    """"torch 2.14.1+cu130 with CUDA 13.0 kernels for 8.0;9.0", or why that is unknown."""
    if build_info is None:
        return "unknown (no build record)"
    cuda = f"CUDA {build_info.cuda_version} kernels for {build_info.cuda_archs}" if build_info.cuda_version else "no CUDA kernels"
    return f"torch {build_info.torch_version} with {cuda}"


def _warn(reason: str) -> None:
    message = (
        f"indeed_ext: the compiled kernels did not load ({reason}). Built for {built_for()}; running on torch "
        f"{torch.__version__}. The ops run on Triton (CUDA tensors) and the PyTorch reference instead, and "
        f"backend='cpu' or 'cuda' raises. Build them for this torch ({rebuild_command()}) or install a wheel built "
        f"for it (indeed_ext-*+torch{'.'.join(torch.__version__.split('.')[:2])}*.whl)."
    )
    warnings.warn(message, KernelsNotLoadedWarning, stacklevel=2)


build_info = _load_build_info()
load_error = _load_kernels()
loaded = load_error is None
if not loaded:
    _warn(load_error)
