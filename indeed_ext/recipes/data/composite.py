"""Composite multi-label images (the paper's Fig. 2) built lazily from an ObjectPool.

A canvas is a grid x grid grid of cells (GRID = 3 unless a set is built with another), each
the size of one object (3H x 3W for a 3x3 grid). A training image holds N objects of N distinct labels in N distinct
random cells, the other cells empty (zeros); a single-label test image holds one object
in a random cell. Item i depends only on (seed, i): a numpy generator seeded with both
picks the labels, the cells and the objects (``seed`` is an int or a tuple of ints, e.g.
(run seed, stream)), so the sets need no storage and any
worker or process builds the same image for the same index. A training set's labels are
uniform random subsets, or follow a co-occurrence structure (cooccur.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .cooccur import Cooccurrence
from .sources import ObjectPool

GRID = 3


class _CanvasSet(Dataset):
    def __init__(self, pool: ObjectPool, size: int, seed: int | tuple[int, ...], transform: Callable | None = None, grid: int = GRID):
        if size < 1:
            raise ValueError(f"a data set needs at least one image, got size {size}")
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"the grid must be an int >= 1 (cells per side), got {grid!r}")
        counts = torch.bincount(pool.labels, minlength=len(pool.class_names))
        if (counts == 0).any():
            missing = [pool.class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
            raise ValueError(f"the object pool has no object of class(es) {missing}")
        self.pool, self.size, self.transform, self.grid = pool, size, transform, grid
        self.seed = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
        order = torch.argsort(pool.labels, stable=True)
        self._class_objects = torch.split(order, counts.tolist())  # object indices per class
        self.num_classes = len(pool.class_names)
        _, self.channels, self.object_h, self.object_w = pool.images.shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.grid * self.object_h, self.grid * self.object_w)

    def __len__(self) -> int:
        return self.size

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, cells, object indices) of item ``index``; cells number the grid row-major."""
        raise NotImplementedError

    def canvas(self, index: int) -> torch.Tensor:
        """The uint8 canvas (C, grid H, grid W) of item ``index``, before the transform."""
        return self._paint(*self.layout(index)[1:])

    def _paint(self, cells: np.ndarray, objects: np.ndarray) -> torch.Tensor:
        image = torch.zeros(self.image_shape, dtype=torch.uint8)
        h, w = self.object_h, self.object_w
        for cell, obj in zip(cells.tolist(), objects.tolist()):
            row, col = divmod(cell, self.grid)
            image[:, row * h : (row + 1) * h, col * w : (col + 1) * w] = self.pool.images[obj]
        return image

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a set of {self.size} images")
        return np.random.default_rng((*self.seed, index))

    def _pick_objects(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        return np.array([self._class_objects[k][rng.integers(len(self._class_objects[k]))] for k in labels.tolist()], dtype=np.int64)

    def __getitem__(self, index: int):
        labels, cells, objects = self.layout(index)
        image = self._paint(cells, objects)
        target = torch.zeros(self.num_classes)
        target[torch.from_numpy(labels)] = 1.0
        return (image if self.transform is None else self.transform(image)), target


class CompositeMultiLabel(_CanvasSet):
    """Training canvases: ``labels_per_image`` objects of distinct labels in distinct cells.

    Items are (image, target): the transform of the uint8 canvas and a float multi-hot (c,).
    cooccurrence: how the label sets are drawn (None: uniform random subsets; see cooccur.py).
    """

    def __init__(
        self, pool: ObjectPool, labels_per_image: int, size: int, seed: int | tuple[int, ...], transform: Callable | None = None,
        cooccurrence: Cooccurrence | None = None, grid: int = GRID,
    ):
        super().__init__(pool, size, seed, transform, grid)
        limit = min(grid * grid, self.num_classes)
        if not 1 <= labels_per_image <= limit:
            raise ValueError(f"labels per image must be between 1 and {limit} (min of {grid * grid} cells and {self.num_classes} classes), got {labels_per_image}")
        if cooccurrence is not None and cooccurrence.num_classes != self.num_classes:
            raise ValueError(f"the co-occurrence structure is over {cooccurrence.num_classes} classes, the pool has {self.num_classes}")
        self.labels_per_image, self.cooccurrence = labels_per_image, cooccurrence
        self._targets = None

    def _labels(self, rng: np.random.Generator) -> np.ndarray:
        if self.cooccurrence is None:
            return rng.choice(self.num_classes, self.labels_per_image, replace=False)
        return self.cooccurrence.sample(rng, self.labels_per_image)

    def layout(self, index: int):
        rng = self._rng(index)
        labels = self._labels(rng)
        cells = rng.choice(self.grid * self.grid, self.labels_per_image, replace=False)
        return labels, cells, self._pick_objects(rng, labels)

    @property
    def targets(self) -> torch.Tensor:
        """(size, c) float multi-hot of every item, from the label draws alone (no painting); computed once."""
        if self._targets is None:
            targets = torch.zeros(self.size, self.num_classes)
            for index in range(self.size):
                targets[index, torch.from_numpy(self._labels(self._rng(index)))] = 1.0
            self._targets = targets
        return self._targets


class SingleLabelCanvas(_CanvasSet):
    """Test canvases: one object in a random cell; its class is drawn uniformly, so classes are balanced."""

    def layout(self, index: int):
        rng = self._rng(index)
        labels = rng.integers(self.num_classes, size=1)
        cells = rng.integers(self.grid * self.grid, size=1)
        return labels, cells, self._pick_objects(rng, labels)
