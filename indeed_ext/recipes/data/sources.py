"""Readers of the object sources that the composite multi-label sets are built from.

Each source gives an ObjectPool per split: uint8 images (K, C, h, w) and int64 labels (K,).
- MNIST: IDX files, looked up in torchvision's layout ROOT/MNIST/raw/ and then in ROOT
  itself, each file extracted or gzipped (.gz). Read here; torchvision's downloader is not used.
  MNIST's 10,000 test digits ship with the package (BUNDLED_MNIST; bundled_mnist/README.md
  gives their source, checksums and licence), so ml-mnist works offline from a fresh clone.
- CIFAR-10: the python pickle batches in ROOT/cifar-10-batches-py/.
- sklearn digits: scikit-learn's bundled 8x8 digits (1,797 images, no files).

A source that has one file set only (sklearn digits always; MNIST or CIFAR-10 test
files with ``split_test_set``) is split into disjoint train/test object pools, 80/20
per class by a fixed permutation (see ``split_pool``), the same for every run seed so
that runs with different seeds compare on the same objects.
"""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass

import numpy as np
import torch

MNIST_LAYOUT = "ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision's layout) or the same files in ROOT"
CIFAR10_LAYOUT = "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch} (the CIFAR-10 python version)"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
# The t10k IDX files of MNIST as distributed (CC BY-SA 3.0, Y. LeCun and C. Cortes): read when no root is given.
BUNDLED_MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled_mnist")

# Fraction of a single file set that becomes the test pool, and the fixed seed of the
# permutation that splits it (independent of the run seed, see the module docstring).
TEST_POOL_FRACTION = 0.2
POOL_SPLIT_SEED = 0

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class ObjectPool:
    """Single-label objects: images uint8 (K, C, h, w), labels int64 (K,) in [0, len(class_names))."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"object images must be uint8 (K, C, h, w), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} object images but labels of shape {tuple(self.labels.shape)}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"object labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: np.ndarray) -> "ObjectPool":
        index = torch.as_tensor(index, dtype=torch.long)
        return ObjectPool(self.images[index], self.labels[index], self.class_names)


def split_pool(pool: ObjectPool, test_fraction: float = TEST_POOL_FRACTION) -> tuple[ObjectPool, ObjectPool]:
    """Disjoint (train, test) pools of one file set, stratified: a fixed random round(k * fraction)
    of the k objects of each class go to the test pool (at least one, and never all of them)."""
    labels = pool.labels.numpy()
    order = np.random.default_rng(POOL_SPLIT_SEED).permutation(len(pool))
    in_test = np.zeros(len(pool), dtype=bool)
    for k in np.unique(labels):
        members = order[labels[order] == k]
        in_test[members[: min(len(members) - 1, max(1, round(len(members) * test_fraction)))]] = True
    return pool.subset(np.flatnonzero(~in_test)), pool.subset(np.flatnonzero(in_test))


def downscale_pool(pool: ObjectPool, factor: int) -> ObjectPool:
    """The objects at 1/factor of their side: the means of factor x factor blocks, rounded (e.g. MNIST's 28 px digits at 14 px)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"downscale factor must be an int >= 1, got {factor!r}")
    h, w = pool.images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"objects of {h}x{w} px do not divide into {factor}x{factor} blocks")
    images = torch.nn.functional.avg_pool2d(pool.images.float(), factor).round().to(torch.uint8)
    return ObjectPool(images, pool.labels, pool.class_names)


# ----------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: str) -> np.ndarray:
    """The array in an IDX file (gzipped when the name ends in .gz); ValueError naming the file if corrupt."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_mnist_file(root: str, stem: str) -> str:
    for folder in (os.path.join(root, "MNIST", "raw"), root):
        for name in (stem, stem + ".gz"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    hint = "; with only the t10k files, split them into train and test digits (split_test_set, --split-test-set)" if stem.startswith("train") else ""
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found under {root!r}; expected {MNIST_LAYOUT}{hint}")


def load_mnist(root: str, split: str) -> ObjectPool:
    """MNIST split "train" (train-*) or "test" (t10k-*) as a pool of (1, 28, 28) digits."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = find_mnist_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_mnist_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (K, h, w), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: expected {len(images)} labels (one per image of {images_path}), got shape {labels.shape}")
    if len(labels) and labels.max() >= 10:
        raise ValueError(f"{labels_path}: MNIST labels must be digits 0-9, found {int(labels.max())}")
    return ObjectPool(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), DIGIT_CLASSES)


# ----------------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a data pickle")
        return super().find_class(module, name)


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (K, 3, 32, 32), labels int64 (K,)) of one CIFAR-10 python batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"CIFAR-10 file {path!r} not found; expected {CIFAR10_LAYOUT}") from None
    except Exception as e:  # pickle raises many types on corrupt input
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (keys {sorted(batch)}; expected 'data' and 'labels')")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (K, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() >= 10)):
        raise ValueError(f"{path}: 'labels' must be {len(data)} integers in [0, 10)")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str, split: str) -> ObjectPool:
    """CIFAR-10 split "train" (data_batch_1..5) or "test" (test_batch) as a pool of (3, 32, 32) images."""
    folder = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"CIFAR-10 folder {folder!r} not found; expected {CIFAR10_LAYOUT}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [read_cifar_batch(os.path.join(folder, name)) for name in names]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return ObjectPool(torch.from_numpy(images), torch.from_numpy(labels), CIFAR10_CLASSES)


# ----------------------------------------------------------------------------- sklearn digits
def load_sklearn_digits() -> ObjectPool:
    """scikit-learn's bundled 8x8 digits (values 0-16) scaled to uint8 0-255, shape (1797, 1, 8, 8)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("dataset ml-digits needs scikit-learn (pip install scikit-learn)") from e
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ObjectPool(torch.from_numpy(images), torch.from_numpy(digits.target.astype(np.int64)), DIGIT_CLASSES)
