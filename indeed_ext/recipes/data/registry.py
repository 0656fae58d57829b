"""Data sets by name: each builder turns DataOptions into a DataBundle (train and test sets).

New data sets register a builder with ``@register_dataset("name")``; the driver looks
them up by the name given to ``--dataset``.

- Composite sets (ml-digits, ml-mnist, ml-mnist-mini, ml-cifar10): train_size composite canvases of
  labels_per_image objects, test_size single-object canvases. ml-mnist without a root
  reads the bundled MNIST test digits (sources.BUNDLED_MNIST), split into train and test
  digits as with split_test_set. cooccur: a co-occurrence
  SPEC for the training label sets (cooccur.py), None for uniform ones.
- Photographs (voc2007, coco2014): the local copy under root, in the train scheme
  ("all" or "split") and the test scheme ("single" or "entire") of images.SCHEMES,
  squish-resized to image_size; training images get Cutout (cutout, as a fraction of
  the side) and RandAugment when asked; ImageNet mean and std. train_size and
  test_size do not apply.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from .coco import COCO2014
from .composite import GRID, CompositeMultiLabel, SingleLabelCanvas
from .cooccur import CooccurSpec
from .images import IMAGENET_MEAN, IMAGENET_STD, SCHEME_SUBSET, eval_transform, train_transform
from .sources import BUNDLED_MNIST, ObjectPool, downscale_pool, load_cifar10, load_mnist, load_sklearn_digits, split_pool
from .transforms import CanvasTransform
from .voc import VOC2007

# Seed streams: the train and test sets of one run seed draw from independent generators (and so do
# the multi-label test canvases of multilabel_test_set).
TRAIN_STREAM, TEST_STREAM, MULTILABEL_TEST_STREAM = 1, 2, 3
TRAIN_SCHEMES = tuple(scheme for scheme, subset in SCHEME_SUBSET.items() if subset == "train")
TEST_SCHEMES = tuple(scheme for scheme, subset in SCHEME_SUBSET.items() if subset == "test")
PHOTO_DATASETS = ("voc2007", "coco2014")  # the real-image sets (the others are composites)


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
    image_size: int = 224  # photographs: the square side they are resized to
    train_scheme: str = "all"  # photographs: "all" or "split"
    test_scheme: str = "entire"  # photographs: "single" or "entire"
    cooccur: str | None = None  # composites: co-occurrence SPEC of the training label sets


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
    context: torch.Tensor | None = None  # (c, c) bool, row k: the classes k co-occurs with by construction (--cooccur)
    train_eval: Dataset | None = None  # the training images with the test transform, to score them (the bias ranking)


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


def composite_bundle(train_pool: ObjectPool, test_pool: ObjectPool, options: DataOptions, mean, std, grid: int = GRID) -> DataBundle:
    """Composite training canvases and single-label test canvases of two object pools, grid x grid cells."""
    mean, std = tuple(mean), tuple(std)
    train_transform = CanvasTransform(mean, std, options.cutout, options.randaugment)
    cooccurrence = None if options.cooccur is None else CooccurSpec.parse(options.cooccur).resolve(len(train_pool.class_names))
    train = CompositeMultiLabel(
        train_pool, options.labels_per_image, options.train_size, (options.seed, TRAIN_STREAM), train_transform, cooccurrence, grid
    )
    test = SingleLabelCanvas(test_pool, options.test_size, (options.seed, TEST_STREAM), CanvasTransform(mean, std), grid)
    object_size = max(train.object_h, train.object_w)
    context = None if cooccurrence is None else cooccurrence.context_matrix()
    return DataBundle(train, test, train_pool.class_names, train.image_shape, mean, std, object_size, context,
                      _with_transform(train, CanvasTransform(mean, std)))  # fmt: skip


def multilabel_test_set(bundle: DataBundle, options: DataOptions) -> Dataset:
    """Test images that hold several labels, for Singh et al.'s exclusive / co-occur AP. Composites' test canvases
    hold one object: for them, options.test_size canvases of the test objects drawn as the training canvases are
    (labels per image, co-occurrence structure, grid). Photographs: their test set (multi-label in scheme "entire")."""
    if not isinstance(bundle.test, SingleLabelCanvas):
        return bundle.test
    train, test = bundle.train, bundle.test
    return CompositeMultiLabel(test.pool, train.labels_per_image, options.test_size, (options.seed, MULTILABEL_TEST_STREAM),
                               test.transform, train.cooccurrence, test.grid)  # fmt: skip


def _with_transform(dataset: Dataset, transform: Callable) -> Dataset:
    """The same images (a shallow copy) through another transform."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


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


def _mnist_pools(options: DataOptions) -> tuple[ObjectPool, ObjectPool]:
    """MNIST's digits from the IDX files under root, else the bundled test digits (one file set: split)."""
    if options.root is None:
        return split_pool(load_mnist(BUNDLED_MNIST, "test"))
    return _file_pools(load_mnist, options.root, options.split_test_set)


@register_dataset("ml-mnist")
def ml_mnist(options: DataOptions) -> DataBundle:
    """MNIST digits (28 px) from the IDX files under root, else the bundled test digits; canvases 84x84."""
    return composite_bundle(*_mnist_pools(options), options, mean=(0.0,), std=(1.0,))


@register_dataset("ml-mnist-mini")
def ml_mnist_mini(options: DataOptions) -> DataBundle:
    """ml-mnist at a ninth of the pixels, make demo's set: the digits halved to 14 px (means of 2x2 blocks) on a
    2x2 grid, canvases 28x28 (at most 4 labels per image)."""
    pools = [downscale_pool(pool, 2) for pool in _mnist_pools(options)]
    return composite_bundle(*pools, options, mean=(0.0,), std=(1.0,), grid=2)


@register_dataset("ml-cifar10")
def ml_cifar10(options: DataOptions) -> DataBundle:
    """CIFAR-10 images from the python batches; canvases 96x96, normalised with ImageNet statistics."""
    pools = _file_pools(load_cifar10, _require_root("ml-cifar10", options), options.split_test_set)
    return composite_bundle(*pools, options, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def photo_bundle(dataset_class, options: DataOptions) -> DataBundle:
    """Train and test sets of a real-image reader (VOC2007, COCO2014) in the options' schemes."""
    if options.train_scheme not in TRAIN_SCHEMES:
        raise ValueError(f"unknown training scheme {options.train_scheme!r}; expected one of {TRAIN_SCHEMES}")
    if options.test_scheme not in TEST_SCHEMES:
        raise ValueError(f"unknown test scheme {options.test_scheme!r}; expected one of {TEST_SCHEMES}")
    if options.image_size < 1:
        raise ValueError(f"image size must be >= 1, got {options.image_size}")
    if options.cooccur is not None:
        raise ValueError("a co-occurrence structure (--cooccur) applies to the composite sets only: photographs have their own")
    size = options.image_size
    train = dataset_class(options.root, options.train_scheme, train_transform(size, options.cutout, options.randaugment))
    test = dataset_class(options.root, options.test_scheme, eval_transform(size))
    return DataBundle(train, test, train.class_names, (3, size, size), IMAGENET_MEAN, IMAGENET_STD,
                      train_eval=_with_transform(train, eval_transform(size)))  # fmt: skip


@register_dataset("voc2007")
def voc2007(options: DataOptions) -> DataBundle:
    """PASCAL VOC-2007 from ROOT/VOCdevkit/VOC2007 (trainval for training, test for testing); 20 classes."""
    _require_root("voc2007", options)
    return photo_bundle(VOC2007, options)


@register_dataset("coco2014")
def coco2014(options: DataOptions) -> DataBundle:
    """MS-COCO 2014 from ROOT/{train2014,val2014,annotations} (train2014 for training, val2014 for testing); 80 classes."""
    _require_root("coco2014", options)
    return photo_bundle(COCO2014, options)
