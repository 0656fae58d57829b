"""Data for the driver: composite multi-label sets (ML-MNIST, ML-CIFAR-10, ml-digits) by name."""
from .composite import GRID, CompositeMultiLabel, SingleLabelCanvas
from .cooccur import CooccurSpec, Cooccurrence
from .registry import DATASETS, DataBundle, DataOptions, build_dataset, composite_bundle, register_dataset
from .sources import ObjectPool, downscale_pool, load_cifar10, load_mnist, load_sklearn_digits, read_cifar_batch, read_idx, split_pool
from .transforms import CanvasTransform, Cutout

__all__ = [
    "DATASETS",
    "GRID",
    "CanvasTransform",
    "CompositeMultiLabel",
    "CooccurSpec",
    "Cooccurrence",
    "Cutout",
    "DataBundle",
    "DataOptions",
    "ObjectPool",
    "SingleLabelCanvas",
    "build_dataset",
    "composite_bundle",
    "downscale_pool",
    "load_cifar10",
    "load_mnist",
    "load_sklearn_digits",
    "read_cifar_batch",
    "read_idx",
    "split_pool",
    "register_dataset",
]
