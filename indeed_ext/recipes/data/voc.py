"""PASCAL VOC-2007 as a multi-label data set, read from a local VOCdevkit.

API
---
VOC_CLASSES: the 20 class names in the standard alphabetical order (target index order).
find_voc2007(root) -> str
    the VOC2007 folder; ``root`` may be the folder holding VOCdevkit, VOCdevkit itself,
    or VOC2007 itself.
read_voc2007(root, image_set, use_difficult=False) -> (image_ids, targets (N, 20) float)
    image_set "trainval" or "test": ids from ImageSets/Main/<image_set>.txt in file order,
    targets from Annotations/<id>.xml.
VOC2007(root, scheme="all", transform=None, use_difficult=False)
    a MultiLabelImages (see images.py): items (transform(PIL image), target (20,)).
    Schemes: "all" = trainval (5,011 images), "split" = trainval images with >= 2 classes,
    "single" = test images with exactly 1 class, "entire" = test (4,952 images).

Difficult objects: by default an object marked <difficult>1</difficult> is ignored, so a
class present in an image only through difficult objects is a negative there. The
devkit's own statistics count only non-difficult objects, and its classification
evaluation leaves difficult-only images out of a class's AP; a multi-hot target cannot
leave an entry out, and "absent" is the choice that does not teach the model ambiguous
positives. The schemes' single/multi-label counts follow from this choice;
``use_difficult=True`` counts difficult objects as positives instead.

Expected layout (the VOCtrainval_06-Nov-2007 and VOCtest_06-Nov-2007 archives extracted
into the same folder)::

    VOCdevkit/VOC2007/Annotations/<id>.xml
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt, test.txt
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Callable

import torch

from .images import SCHEME_SUBSET, SCHEMES, MultiLabelImages, require_files, scheme_indices

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IMAGE_SETS = {"train": "trainval", "test": "test"}
LAYOUT = """  ROOT/VOCdevkit/VOC2007/Annotations/<id>.xml
  ROOT/VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
  ROOT/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
(ROOT may also be VOCdevkit or VOC2007 itself)"""
_PARTS = ("Annotations", "ImageSets", "JPEGImages")


def find_voc2007(root: str) -> str:
    for candidate in (os.path.join(root, "VOCdevkit", "VOC2007"), os.path.join(root, "VOC2007"), root):
        if all(os.path.isdir(os.path.join(candidate, part)) for part in _PARTS):
            return candidate
    raise FileNotFoundError(f"no VOC2007 folder (with {', '.join(_PARTS)}) found at {root!r}; expected layout:\n{LAYOUT}")


def _read_ids(voc: str, image_set: str) -> list[str]:
    path = os.path.join(voc, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image list {path!r} not found; expected layout:\n{LAYOUT}")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _read_classes(path: str, use_difficult: bool) -> set[int]:
    """Indices of the classes with at least one counted object in one annotation file."""
    try:
        objects = ET.parse(path).getroot().iter("object")
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation {path!r} not found; expected layout:\n{LAYOUT}") from None
    except ET.ParseError as e:
        raise ValueError(f"annotation {path!r} is not valid XML: {e}") from e
    classes = set()
    for obj in objects:
        name = obj.findtext("name", default="").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"annotation {path!r}: unknown class {name!r}; expected one of {VOC_CLASSES}")
        if use_difficult or obj.findtext("difficult", default="0").strip() != "1":
            classes.add(VOC_CLASSES.index(name))
    return classes


def read_voc2007(root: str, image_set: str, use_difficult: bool = False) -> tuple[list[str], torch.Tensor]:
    if image_set not in IMAGE_SETS.values():
        raise ValueError(f"unknown VOC2007 image set {image_set!r}; expected one of {tuple(IMAGE_SETS.values())}")
    voc = find_voc2007(root)
    image_ids = _read_ids(voc, image_set)
    targets = torch.zeros(len(image_ids), len(VOC_CLASSES))
    for row, image_id in enumerate(image_ids):
        for k in _read_classes(os.path.join(voc, "Annotations", f"{image_id}.xml"), use_difficult):
            targets[row, k] = 1.0
    return image_ids, targets


class VOC2007(MultiLabelImages):
    def __init__(self, root: str, scheme: str = "all", transform: Callable | None = None, use_difficult: bool = False):
        if scheme not in SCHEME_SUBSET:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
        image_ids, targets = read_voc2007(root, IMAGE_SETS[SCHEME_SUBSET[scheme]], use_difficult)
        keep = scheme_indices(targets, scheme)
        image_ids = [image_ids[i] for i in keep]
        folder = os.path.join(find_voc2007(root), "JPEGImages")
        file_names = [f"{image_id}.jpg" for image_id in image_ids]
        require_files(folder, file_names, LAYOUT)
        paths = [os.path.join(folder, name) for name in file_names]
        super().__init__(paths, targets[keep], VOC_CLASSES, image_ids, transform)
        self.scheme = scheme
