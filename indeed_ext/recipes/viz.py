"""Pictures: the confidence map (paper Fig. 3) as an annotated PNG.

Drawn on a bare matplotlib Figure with the Agg canvas, so nothing touches pyplot's
global state or needs a display.
"""
from __future__ import annotations

import math
import os

import torch


def save_confidence_map(matrix, path, class_names=None, title: str = "") -> None:
    """Write matrix (c, c) (confidence_map's output: row = true class, column = mean
    sigmoid score of each class) to path as a PNG heat map with each cell's value
    written in it. The colour scale is fixed to [0, 1], so maps of different models
    compare by eye. Missing parent folders are created."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("save_confidence_map needs matplotlib: pip install matplotlib") from e

    values = torch.as_tensor(matrix, dtype=torch.float64).detach().cpu()
    if values.dim() != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix must be square (c, c), got shape {tuple(values.shape)}")
    c = values.shape[0]
    names = [str(k) for k in range(c)] if class_names is None else [str(n) for n in class_names]
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names for a {c}x{c} matrix")

    side = 1.5 + 0.55 * c
    figure = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(values.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(c), names, rotation=45 if max(map(len, names)) > 2 else 0)
    axes.set_yticks(range(c), names)
    axes.set_xlabel("class scored (mean sigmoid score)")
    axes.set_ylabel("true class of the test images")
    for row in range(c):
        for column in range(c):
            v = values[row, column].item()
            axes.text(
                column, row, "n/a" if math.isnan(v) else f"{v:.2f}",
                ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white",
            )
    if title:
        axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
