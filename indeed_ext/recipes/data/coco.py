"""MS-COCO 2014 as a multi-label data set (80 classes), read from a local copy.

API
---
SUBSETS: {"train": "train2014", "test": "val2014"}
read_coco2014(root, subset, keep_unannotated=False)
    -> (image_ids, file_names, targets (N, 80) float, class_names)
    subset "train2014" or "val2014". Classes in ascending category-id order (as ASL),
    images in ascending image-id order.
COCO2014(root, scheme="all", transform=None, keep_unannotated=False)
    a MultiLabelImages (see images.py): items (transform(PIL image), target (80,)).
    Schemes: "all" = train2014, "split" = train2014 images with >= 2 classes,
    "single" = val2014 images with exactly 1 class, "entire" = val2014.

Decisions: every instance annotation makes its category positive, crowd regions
(iscrowd=1) included, as ASL's COCO loader does. Images without any annotation are
dropped by default, again as ASL does (it lists images from the annotation index);
the literature's counts for that are 82,081 of train2014's 82,783 images and 40,137
of val2014's 40,504.
``keep_unannotated=True`` keeps them with all-zero targets in "all" and "entire".

Expected layout::

    ROOT/train2014/COCO_train2014_<id>.jpg
    ROOT/val2014/COCO_val2014_<id>.jpg
    ROOT/annotations/instances_train2014.json, instances_val2014.json
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch

from .images import SCHEME_SUBSET, SCHEMES, MultiLabelImages, require_files, scheme_indices

SUBSETS = {"train": "train2014", "test": "val2014"}
LAYOUT = """  ROOT/train2014/*.jpg
  ROOT/val2014/*.jpg
  ROOT/annotations/instances_train2014.json
  ROOT/annotations/instances_val2014.json"""


def _load_instances(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path!r} not found; expected layout:\n{LAYOUT}")
    try:
        with open(path) as f:
            instances = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path!r} is not valid JSON: {e}") from e
    missing = [key for key in ("images", "annotations", "categories") if key not in instances]
    if missing:
        raise ValueError(f"annotation file {path!r} lacks {missing}; expected COCO instances format")
    return instances


def read_coco2014(
    root: str, subset: str, keep_unannotated: bool = False
) -> tuple[list[int], list[str], torch.Tensor, tuple[str, ...]]:
    if subset not in SUBSETS.values():
        raise ValueError(f"unknown COCO subset {subset!r}; expected one of {tuple(SUBSETS.values())}")
    path = os.path.join(root, "annotations", f"instances_{subset}.json")
    instances = _load_instances(path)
    categories = sorted(instances["categories"], key=lambda category: category["id"])
    column = {category["id"]: k for k, category in enumerate(categories)}
    file_name = {image["id"]: image["file_name"] for image in instances["images"]}

    classes_of: dict[int, set[int]] = {}
    for annotation in instances["annotations"]:
        image_id, category_id = annotation["image_id"], annotation["category_id"]
        if category_id not in column:
            raise ValueError(f"{path}: annotation {annotation.get('id')} has unknown category id {category_id}")
        if image_id not in file_name:
            raise ValueError(f"{path}: annotation {annotation.get('id')} refers to unknown image id {image_id}")
        classes_of.setdefault(image_id, set()).add(column[category_id])

    image_ids = sorted(file_name if keep_unannotated else classes_of)
    targets = torch.zeros(len(image_ids), len(categories))
    for row, image_id in enumerate(image_ids):
        targets[row, list(classes_of.get(image_id, ()))] = 1.0
    class_names = tuple(category["name"] for category in categories)
    return image_ids, [file_name[i] for i in image_ids], targets, class_names


class COCO2014(MultiLabelImages):
    def __init__(self, root: str, scheme: str = "all", transform: Callable | None = None, keep_unannotated: bool = False):
        if scheme not in SCHEME_SUBSET:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
        subset = SUBSETS[SCHEME_SUBSET[scheme]]
        image_ids, file_names, targets, class_names = read_coco2014(root, subset, keep_unannotated)
        keep = scheme_indices(targets, scheme)
        file_names = [file_names[i] for i in keep]
        folder = os.path.join(root, subset)
        require_files(folder, file_names, LAYOUT)
        paths = [os.path.join(folder, name) for name in file_names]
        super().__init__(paths, targets[keep], class_names, [image_ids[i] for i in keep], transform)
        self.scheme = scheme
