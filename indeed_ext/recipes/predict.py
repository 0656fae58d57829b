"""indeed-predict: per-label probabilities of image files from an indeed-train checkpoint.

    indeed-predict runs/demo/indeed-minmax/checkpoint.pt my_images/ --out predictions.csv
    indeed-predict runs/demo/indeed-minmax/checkpoint.pt photo.png more_images/ scan.jpg

Each image is read with PIL, converted to the training channels (L or RGB), resized to
the training canvas size (bilinear, aspect ratio not kept) and normalised as in training;
the exported model (backbone + classifier) gives one sigmoid probability per label.
The CSV has a header "image,<label 1>,<label 2>,..." and one row per image: the inputs in
the order given, a folder's image files in sorted order (named by file name when the folder
is the only input, else by their path).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
import torch

from .engine import load_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str, config: dict) -> torch.Tensor:
    """The image as the model's input (C, H, W): channels, size and normalisation of training."""
    from PIL import Image

    channels, height, width = config["image_shape"]
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(array).reshape(height, width, channels).permute(2, 0, 1)
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    return (x - mean) / std


def image_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"images folder {folder!r} not found")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    return names


def collect_images(inputs: list[str]) -> list[tuple[str, str]]:
    """(name in the CSV, path) of every image: files as given, folders expanded to their image files."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            found += [(name if len(inputs) == 1 else os.path.join(item, name), os.path.join(item, name)) for name in image_files(item)]
        elif os.path.isfile(item):
            found.append((item, item))
        else:
            raise FileNotFoundError(f"image file or folder {item!r} not found")
    return found


def _read(path: str, config: dict) -> torch.Tensor:
    try:
        return read_image(path, config)
    except OSError as e:  # PIL's UnidentifiedImageError and unreadable files
        raise ValueError(f"cannot read image {path!r}: {e}") from e


@torch.no_grad()
def predict_images(model: torch.nn.Module, config: dict, inputs: list[str], batch_size: int = 64, device: str = "cpu") -> tuple[list[str], torch.Tensor]:
    """(names, probabilities (N, c)) of the image files and folders in inputs (see collect_images)."""
    images = collect_images(inputs)
    model = model.to(device)
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([_read(path, config) for _, path in images[start : start + batch_size]])
        probabilities.append(torch.sigmoid(model(batch.to(device)).float()).cpu())
    return [name for name, _ in images], torch.cat(probabilities)


def write_csv(path: str, names: list[str], probabilities: torch.Tensor, class_names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *class_names])
        for name, row in zip(names, probabilities.tolist()):
            writer.writerow([name, *(f"{p:.6f}" for p in row)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="indeed-predict", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("checkpoint", help="OUT/<run>/checkpoint.pt written by indeed-train")
    parser.add_argument("images", nargs="+", help="image files and/or folders of image files")
    parser.add_argument("--out", default="predictions.csv", help="CSV file to write (default predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f"checkpoint {args.checkpoint!r} not found")
        model, config = load_model(args.checkpoint)
        names, probabilities = predict_images(model, config, args.images, args.batch_size, args.device)
    except (ValueError, OSError) as e:  # PIL raises OSError subclasses for unreadable images
        parser.error(str(e))
    write_csv(args.out, names, probabilities, config["class_names"])
    print(f"wrote {len(names)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
