"""indeed-ext: INDeeD (identical and disparate feature decomposition) for multi-label training.

Fused operators under ``torch.ops.indeed`` (CPU and CUDA C++) and
``torch.ops.indeed_triton`` (Triton), with a backend-selecting Python API. If the C++
kernels do not load (not built, or built for another torch), the import still works: it
warns once and the ops run on Triton and the reference (see _extension.py,
``python -m indeed_ext.info``).
"""
import torch  # noqa: F401  (first: _C links against libc10/libtorch, which importing torch loads)

from . import _extension  # loads _C, which defines torch.ops.indeed
from . import reference
from .losses import INDeeDLoss
from .model import INDeeD
from .ops import decompose, identical_map, register_fakes, six_head_bce, six_head_loss
from .pairs import CooccurrenceStatistic, mine_pairs

if _extension.loaded:
    register_fakes("indeed")  # autograd: csrc/autograd.cpp

# An unbuilt source tree has no build record: "0+unknown" as versioneer writes it.
__version__ = _extension.build_info.version if _extension.build_info else "0+unknown"
__all__ = [
    "INDeeD", "INDeeDLoss", "CooccurrenceStatistic", "decompose", "identical_map", "mine_pairs", "six_head_bce",
    "six_head_loss", "reference", "__version__",
]
