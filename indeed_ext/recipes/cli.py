"""The console scripts indeed-train, -predict, -cam, -study and -bias.

The recipes need the train extra, which a plain `pip install indeed-ext` leaves out: each
script first checks that its modules are installed and, if one is not, exits naming it and
the install command instead of failing with an ImportError's traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

# The train extra of pyproject.toml: the module the recipes import -> the package that installs it.
TRAIN_EXTRA = {
    "torchvision": "torchvision",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
}


def missing_modules() -> list[str]:
    return [module for module in TRAIN_EXTRA if importlib.util.find_spec(module) is None]


def _run(script: str, module: str) -> int:
    missing = missing_modules()
    if missing:
        names = ", ".join(m if TRAIN_EXTRA[m] == m else f"{m} (package {TRAIN_EXTRA[m]})" for m in missing)
        print(f"{script}: {names} {'is' if len(missing) == 1 else 'are'} not installed; the training recipes "
              f"need the train extra: pip install 'indeed-ext[train]'", file=sys.stderr)
        return 1
    return importlib.import_module(f"{__package__}.{module}").main()


def train() -> int:
    return _run("indeed-train", "train")


def predict() -> int:
    return _run("indeed-predict", "predict")


def cam() -> int:
    return _run("indeed-cam", "cam")


def study() -> int:
    return _run("indeed-study", "study")


def bias() -> int:
    return _run("indeed-bias", "bias")
