"""Data sets by name: each builder turns DataOptions into a DataBundle (train and test sets).

New data sets register a builder with ``@register_dataset("name")``; the driver looks
them up by the name given to ``--dataset``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from .composite import CompositeMultiLabel, SingleLabelCanvas
from .sources import ObjectPool, load_cifar10, load_mnist, load_sklearn_digits, split_pool
from .transforms import CanvasTransform

# Seed streams: the train and test sets of one run seed draw from independent generators.
TRAIN_STREAM, TEST_STREAM = 1, 2


@dataclass(frozen=True)
class DataOptions:
    root: str | None = None
    labels_per_image: int = 3
    train_size: int = 8000
    test_size: int = 2000
    seed: int = 0
    split_test_set: bool = False  # build both pools from the test files (see sources.split_pool)
    cutout: float = 0.0
    randaugment: bool = False


@dataclass(frozen=True)
class DataBundle:
    """Train set items (image, multi-hot target); test set items (image, target) with one positive."""

    train: Dataset
    test: Dataset
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) of the model input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    object_size: int | None = None  # side of one object (a grid cell) in px, for sizing a model


DATASETS: dict[str, Callable[[DataOptions], DataBundle]] = {}


def register_dataset(name: str):
    def register(builder: Callable[[DataOptions], DataBundle]):
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        DATASETS[name] = builder
        return builder

    return register


def build_dataset(name: str, options: DataOptions) -> DataBundle:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](options)


def composite_bundle(train_pool: ObjectPool, test_pool: ObjectPool, options: DataOptions, mean, std) -> DataBundle:
    """Composite training canvases and single-label test canvases of two object pools."""
    mean, std = tuple(mean), tuple(std)
    train_transform = CanvasTransform(mean, std, options.cutout, options.randaugment)
    train = CompositeMultiLabel(train_pool, options.labels_per_image, options.train_size, (options.seed, TRAIN_STREAM), train_transform)
    test = SingleLabelCanvas(test_pool, options.test_size, (options.seed, TEST_STREAM), CanvasTransform(mean, std))
    object_size = max(train.object_h, train.object_w)
    return DataBundle(train, test, train_pool.class_names, train.image_shape, mean, std, object_size)


def _require_root(name: str, options: DataOptions) -> str:
    if not options.root:
        raise ValueError(f"dataset {name} reads files: give their folder as root (--root)")
    return options.root


def _file_pools(load, root: str, split_test_set: bool) -> tuple[ObjectPool, ObjectPool]:
    if split_test_set:
        return split_pool(load(root, "test"))
    return load(root, "train"), load(root, "test")


@register_dataset("ml-digits")
def ml_digits(options: DataOptions) -> DataBundle:
    """scikit-learn's 8x8 digits, always split into disjoint train/test pools; canvases 24x24."""
    return composite_bundle(*split_pool(load_sklearn_digits()), options, mean=(0.0,), std=(1.0,))


@register_dataset("ml-mnist")
def ml_mnist(options: DataOptions) -> DataBundle:
    """MNIST digits from IDX files; canvases 84x84."""
    pools = _file_pools(load_mnist, _require_root("ml-mnist", options), options.split_test_set)
    return composite_bundle(*pools, options, mean=(0.0,), std=(1.0,))


@register_dataset("ml-cifar10")
def ml_cifar10(options: DataOptions) -> DataBundle:
    """CIFAR-10 images from the python batches; canvases 96x96, normalised with ImageNet statistics."""
    pools = _file_pools(load_cifar10, _require_root("ml-cifar10", options), options.split_test_set)
    return composite_bundle(*pools, options, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
