"""indeed_ext.recipes.data: readers on tiny files in the real formats, composite layouts, errors."""
import gzip
import hashlib
import os
import shutil
import pickle
import struct

import numpy as np
import pytest
import torch

from indeed_ext.recipes.data import (
    GRID,
    CanvasTransform,
    CompositeMultiLabel,
    Cutout,
    DataOptions,
    ObjectPool,
    SingleLabelCanvas,
    build_dataset,
    downscale_pool,
    load_cifar10,
    load_mnist,
    read_idx,
    register_dataset,
    split_pool,
)

IDX_CODES = {np.uint8: 0x08, np.int16: 0x0B, np.float32: 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_file(path, data: bytes, gz: bool):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if gz:
        path += ".gz"
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


def fake_digits(count, seed, size=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size), dtype=np.uint8), (np.arange(count) % 10).astype(np.uint8)


def write_mnist(folder, splits=("train", "t10k"), gz=True, count=30):
    arrays = {}
    for i, split in enumerate(splits):
        images, labels = fake_digits(count, seed=i)
        write_file(os.path.join(folder, f"{split}-images-idx3-ubyte"), idx_bytes(images), gz)
        write_file(os.path.join(folder, f"{split}-labels-idx1-ubyte"), idx_bytes(labels), gz)
        arrays[split] = (images, labels)
    return arrays


# ----------------------------------------------------------------------------- IDX / MNIST
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(str(tmp_path / "a-idx3-ubyte"), idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == dtype and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("layout", ["MNIST/raw", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_layouts(tmp_path, layout, gz):
    arrays = write_mnist(str(tmp_path / layout), gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pool = load_mnist(str(tmp_path), split)
        images, labels = arrays[prefix]
        assert pool.images.shape == (30, 1, 6, 6) and pool.images.dtype == torch.uint8
        np.testing.assert_array_equal(pool.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(pool.labels.numpy(), labels)


def test_mnist_missing_file_names_file_and_layout(tmp_path):
    write_mnist(str(tmp_path / "MNIST" / "raw"), splits=("t10k",))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*MNIST/raw.*--split-test-set"):
        load_mnist(str(tmp_path), "train")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x02\x03\x04rest", "not an IDX file"),
        (bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 6, 6) + bytes(10), "file has"),
        (bytes([0, 0, 8, 3, 0]), "truncated IDX header"),
    ],
)
def test_read_idx_corrupt(tmp_path, data, message):
    path = write_file(str(tmp_path / "bad-idx3-ubyte"), data, gz=False)
    with pytest.raises(ValueError, match=f"bad-idx3-ubyte.*{message}"):
        read_idx(path)


def test_read_idx_bad_gzip_names_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="x-idx3-ubyte.gz: cannot read"):
        read_idx(str(path))


def test_mnist_label_count_mismatch(tmp_path):
    images, labels = fake_digits(10, seed=0)
    write_file(str(tmp_path / "t10k-images-idx3-ubyte"), idx_bytes(images), gz=False)
    write_file(str(tmp_path / "t10k-labels-idx1-ubyte"), idx_bytes(labels[:7]), gz=False)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: expected 10 labels"):
        load_mnist(str(tmp_path), "test")


def test_ml_mnist_split_test_set_uses_disjoint_test_digits(tmp_path):
    write_mnist(str(tmp_path), splits=("t10k",), count=50)
    options = DataOptions(root=str(tmp_path), labels_per_image=2, train_size=4, test_size=4, split_test_set=True)
    bundle = build_dataset("ml-mnist", options)
    assert bundle.image_shape == (1, 18, 18)
    assert len(bundle.train.pool) == 40 and len(bundle.test.pool) == 10
    train_rows = {bytes(x.numpy()) for x in bundle.train.pool.images}
    assert not train_rows & {bytes(x.numpy()) for x in bundle.test.pool.images}
    with pytest.raises(FileNotFoundError, match="train-images"):
        build_dataset("ml-mnist", DataOptions(root=str(tmp_path)))


# The published MD5s of the decompressed t10k files (bundled_mnist/README.md).
BUNDLED_MD5 = {"t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea", "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637"}


def test_bundled_mnist_is_the_published_test_set():
    from indeed_ext.recipes.data.sources import BUNDLED_MNIST

    for name, md5 in BUNDLED_MD5.items():
        with gzip.open(os.path.join(BUNDLED_MNIST, name), "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, name
    pool = load_mnist(BUNDLED_MNIST, "test")
    assert pool.images.shape == (10000, 1, 28, 28)
    # MNIST's t10k class counts
    assert torch.bincount(pool.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_ml_mnist_reads_the_bundled_digits_without_a_root(tmp_path):
    """No root: the bundled t10k digits, split 8,000 / 2,000 exactly as --root COPY --split-test-set splits a copy."""
    from indeed_ext.recipes.data.sources import BUNDLED_MNIST

    options = DataOptions(labels_per_image=2, train_size=4, test_size=4)
    bundle = build_dataset("ml-mnist", options)
    assert bundle.image_shape == (1, 84, 84) and (len(bundle.train.pool), len(bundle.test.pool)) == (8000, 2000)
    for name in BUNDLED_MD5:
        shutil.copy(os.path.join(BUNDLED_MNIST, name), tmp_path)
    copy = build_dataset("ml-mnist", DataOptions(root=str(tmp_path), split_test_set=True, labels_per_image=2, train_size=4, test_size=4))
    for ours, theirs in ((bundle.train, copy.train), (bundle.test, copy.test)):
        assert torch.equal(ours.pool.images, theirs.pool.images) and torch.equal(ours.pool.labels, theirs.pool.labels)
    assert all(torch.equal(bundle.train[i][0], copy.train[i][0]) for i in range(4))
    with pytest.raises(FileNotFoundError, match="train-images"):  # a root without training files still needs the flag
        build_dataset("ml-mnist", DataOptions(root=str(tmp_path)))


def test_ml_mnist_mini_halves_the_digits_on_a_2x2_grid():
    bundle = build_dataset("ml-mnist-mini", DataOptions(labels_per_image=2, train_size=4, test_size=4))
    full = build_dataset("ml-mnist", DataOptions(labels_per_image=2, train_size=4, test_size=4))
    assert bundle.image_shape == (1, 28, 28) and bundle.object_size == 14 and bundle.train.grid == 2
    assert torch.equal(bundle.train.pool.labels, full.train.pool.labels)
    assert torch.equal(bundle.train.pool.images, downscale_pool(full.train.pool, 2).images)
    with pytest.raises(ValueError, match="between 1 and 4"):
        build_dataset("ml-mnist-mini", DataOptions(labels_per_image=5))


def test_downscale_pool():
    images = torch.tensor([[1, 2, 10, 10], [3, 4, 10, 11], [0, 0, 255, 255], [0, 1, 255, 255]], dtype=torch.uint8).view(1, 1, 4, 4)
    pool = ObjectPool(images, torch.tensor([0]), ("a",))
    # block means 2.5, 10.25, 0.25, 255, rounded half to even
    assert downscale_pool(pool, 2).images.flatten().tolist() == [2, 10, 0, 255]
    assert torch.equal(downscale_pool(pool, 1).images, images)
    with pytest.raises(ValueError, match="do not divide into 3x3 blocks"):
        downscale_pool(pool, 3)
    with pytest.raises(ValueError, match="int >= 1"):
        downscale_pool(pool, 0)


# ----------------------------------------------------------------------------- CIFAR-10
def write_cifar_batch(path, count, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, count)],
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * count,
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def test_load_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [write_cifar_batch(folder / f"data_batch_{i}", 4, seed=i) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", 3, seed=0)
    pool = load_cifar10(str(tmp_path), "train")
    assert pool.images.shape == (20, 3, 32, 32) and pool.class_names[0] == "airplane"
    assert pool.labels.tolist() == sum((b[b"labels"] for b in train), [])
    # Rows are 1024 red, then green, then blue values, each row-major.
    np.testing.assert_array_equal(pool.images[5, 1].numpy().ravel(), train[1][b"data"][1, 1024:2048])
    test_pool = load_cifar10(str(tmp_path), "test")
    np.testing.assert_array_equal(test_pool.images.reshape(3, -1).numpy(), test[b"data"])


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*expected"):
        load_cifar10(str(tmp_path), "test")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(str(tmp_path), "test")
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10(str(tmp_path), "test")
    with open(folder / "test_batch", "wb") as f:  # a pickle that would run code must not be loaded
        pickle.dump(print, f)
    with pytest.raises(ValueError, match="unexpected object"):
        load_cifar10(str(tmp_path), "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"'data' must be uint8 of shape \(K, 3072\)"):
        load_cifar10(str(tmp_path), "test")


# ----------------------------------------------------------------------------- composites
def marked_pool(num_classes=10, per_class=3, size=2):
    """Objects whose pixels all equal label + 1, so a canvas shows which label sits in which cell."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = (labels + 1).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()
    return ObjectPool(images, labels, tuple(str(i) for i in range(num_classes)))


def decode_cells(canvas, size=2, grid=GRID):
    """{cell: label} of the non-empty cells; asserts every cell is uniform."""
    cells = {}
    for cell in range(grid * grid):
        row, col = divmod(cell, grid)
        block = canvas[0, row * size : (row + 1) * size, col * size : (col + 1) * size]
        assert (block == block[0, 0]).all()
        if block[0, 0] > 0:
            cells[cell] = int(block[0, 0]) - 1
    return cells


@pytest.mark.parametrize("n", [2, 3, 5, 7, 9])
def test_composite_layout(n):
    data = CompositeMultiLabel(marked_pool(), n, size=40, seed=(5, 1))
    assert data.image_shape == (1, 6, 6) and len(data) == 40
    cells_used = set()
    for i in range(len(data)):
        canvas, target = data[i]
        cells = decode_cells(canvas)
        assert len(cells) == n and len(set(cells.values())) == n  # N distinct cells with N distinct labels
        assert sorted(cells.values()) == torch.nonzero(target).flatten().tolist()
        assert target.sum() == n and target.dtype == torch.float32
        cells_used |= set(cells)
    assert cells_used == set(range(9))


def test_composite_layout_on_a_2x2_grid():
    """grid=2: canvases of 2 x 2 objects, every layout drawn as on the 3 x 3 grid; N is capped by the 4 cells."""
    data = CompositeMultiLabel(marked_pool(), 3, size=40, seed=(5, 1), grid=2)
    assert data.image_shape == (1, 4, 4)
    cells_used = set()
    for i in range(len(data)):
        canvas, target = data[i]
        cells = decode_cells(canvas, grid=2)
        assert len(cells) == 3 and sorted(cells.values()) == torch.nonzero(target).flatten().tolist()
        cells_used |= set(cells)
    assert cells_used == set(range(4))
    test = SingleLabelCanvas(marked_pool(), size=50, seed=3, grid=2)
    assert {c for i in range(50) for c in decode_cells(test[i][0], grid=2)} == set(range(4))
    with pytest.raises(ValueError, match="between 1 and 4"):
        CompositeMultiLabel(marked_pool(), 5, size=4, seed=0, grid=2)
    with pytest.raises(ValueError, match="grid must be an int >= 1"):
        SingleLabelCanvas(marked_pool(), size=4, seed=0, grid=0)


def test_composite_deterministic_by_seed_and_index():
    pool = marked_pool()
    a, b = CompositeMultiLabel(pool, 3, 30, seed=1), CompositeMultiLabel(pool, 3, 30, seed=1)
    for i in (0, 7, 29):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    assert torch.equal(a[7][0], a[7][0])  # lazily rebuilt, same image
    other = CompositeMultiLabel(pool, 3, 30, seed=2)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(30))
    assert any(not torch.equal(a[i][0], a[i + 1][0]) for i in range(29))


def test_single_label_canvases():
    data = SingleLabelCanvas(marked_pool(), size=200, seed=3)
    labels = []
    for i in range(len(data)):
        canvas, target = data[i]
        cells = decode_cells(canvas)
        assert len(cells) == 1 and target.sum() == 1
        labels.append(next(iter(cells.values())))
        assert target[labels[-1]] == 1
    assert set(labels) == set(range(10))


@pytest.mark.parametrize("n, classes, match", [(0, 10, "between 1 and 9"), (10, 10, "between 1 and 9"), (5, 4, "between 1 and 4")])
def test_bad_labels_per_image(n, classes, match):
    with pytest.raises(ValueError, match=match):
        CompositeMultiLabel(marked_pool(num_classes=classes), n, size=4, seed=0)


def test_pool_missing_a_class_and_index_range():
    pool = marked_pool()
    with pytest.raises(ValueError, match=r"no object of class\(es\) \['3'\]"):
        CompositeMultiLabel(pool.subset(np.flatnonzero(pool.labels.numpy() != 3)), 2, size=4, seed=0)
    data = CompositeMultiLabel(pool, 2, size=4, seed=0)
    with pytest.raises(IndexError):
        data[4]


def test_split_pool_disjoint_and_fixed():
    pool = ObjectPool(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100) % 10, tuple("0123456789"))
    train, test = split_pool(pool)
    assert len(train) == 80 and len(test) == 20
    assert set(train.images.flatten().tolist()).isdisjoint(test.images.flatten().tolist())
    assert torch.equal(split_pool(pool)[1].images, test.images)


def test_ml_digits_bundle():
    bundle = build_dataset("ml-digits", DataOptions(labels_per_image=3, train_size=16, test_size=8, seed=0))
    assert bundle.image_shape == (1, 24, 24) and len(bundle.class_names) == 10
    assert len(bundle.train.pool) + len(bundle.test.pool) == 1797
    image, target = bundle.train[0]
    assert image.shape == (1, 24, 24) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target.sum() == 3
    assert all(bundle.test[i][1].sum() == 1 for i in range(8))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_dataset("nope", DataOptions())
    with pytest.raises(ValueError, match="give their folder as root"):
        build_dataset("ml-cifar10", DataOptions())
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("ml-digits")(lambda options: None)


def test_transforms():
    torch.manual_seed(0)
    canvas = torch.full((1, 10, 10), 255, dtype=torch.uint8)
    cut = Cutout(0.3)(canvas)
    assert (cut == 0).sum() in range(1, 10)  # a 3x3 square, clipped at a border at most
    assert (canvas == 255).all()  # the input is left alone
    x = CanvasTransform(mean=(0.5,), std=(0.25,))(canvas)
    torch.testing.assert_close(x, torch.full((1, 10, 10), 2.0))
    augmented = CanvasTransform(mean=(0.0,), std=(1.0,), cutout=0.5, randaugment=True)(canvas)
    assert augmented.shape == (1, 10, 10) and augmented.dtype == torch.float32
    with pytest.raises(ValueError, match="cutout fraction"):
        Cutout(1.5)
