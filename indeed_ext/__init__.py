"""indeed-ext: INDeeD (identical and disparate feature decomposition) for multi-label training.

Fused operators under ``torch.ops.indeed`` (CPU and CUDA C++) and
``torch.ops.indeed_triton`` (Triton), with a backend-selecting Python API.
"""
import torch  # noqa: F401  (first: _C links against libc10/libtorch, which importing torch loads)

from . import _C  # noqa: F401  (loads the library that defines torch.ops.indeed)
from . import reference
from .ops import decompose, identical_map, register_fakes, six_head_bce, six_head_loss

register_fakes("indeed")  # autograd: csrc/autograd.cpp

__version__ = "0.1.0"
__all__ = ["decompose", "identical_map", "six_head_bce", "six_head_loss", "reference", "__version__"]
