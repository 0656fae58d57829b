"""Image counts of every scheme of a local VOC-2007 or MS-COCO 2014 copy, as one JSON object.

    python -m indeed_ext.recipes.data.info --dataset voc2007|coco2014 --root ROOT
        [--use-difficult] [--keep-unannotated]

prints ``{"train": {"all": N, "split": N}, "test": {"single": N, "entire": N}}`` after
checking that every listed image file is present, so a copy can be checked before a
long run. Each annotation file is read once. API: ``scheme_counts(dataset, root,
use_difficult=False, keep_unannotated=False) -> dict`` and ``main(argv=None)``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import coco, voc
from .images import SCHEME_SUBSET, require_files, scheme_indices

DATASETS = ("voc2007", "coco2014")


def _subset_files(dataset: str, root: str, subset: str, use_difficult: bool, keep_unannotated: bool):
    """(targets, image folder, file names, layout) of the "train" or "test" subset."""
    if dataset == "voc2007":
        image_ids, targets = voc.read_voc2007(root, voc.IMAGE_SETS[subset], use_difficult)
        folder = os.path.join(voc.find_voc2007(root), "JPEGImages")
        return targets, folder, [f"{image_id}.jpg" for image_id in image_ids], voc.LAYOUT
    name = coco.SUBSETS[subset]
    _, file_names, targets, _ = coco.read_coco2014(root, name, keep_unannotated)
    return targets, os.path.join(root, name), file_names, coco.LAYOUT


def scheme_counts(dataset: str, root: str, use_difficult: bool = False, keep_unannotated: bool = False) -> dict:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    counts: dict[str, dict[str, int]] = {}
    for subset in ("train", "test"):
        targets, folder, file_names, layout = _subset_files(dataset, root, subset, use_difficult, keep_unannotated)
        require_files(folder, file_names, layout)
        counts[subset] = {
            scheme: len(scheme_indices(targets, scheme)) for scheme, of in SCHEME_SUBSET.items() if of == subset
        }
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indeed_ext.recipes.data.info", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="folder holding VOCdevkit (or VOCdevkit, VOC2007), or the COCO root")
    parser.add_argument("--use-difficult", action="store_true", help="VOC: count difficult objects as positives")
    parser.add_argument("--keep-unannotated", action="store_true", help="COCO: keep images without annotations")
    args = parser.parse_args(argv)
    try:
        counts = scheme_counts(args.dataset, args.root, args.use_difficult, args.keep_unannotated)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
