"""`hashtune.retrieve --show out.png`: each query beside its neighbours, as the service's page shows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashtune.paths import atomic_file

__all__ = ["draw_neighbours"]


def _panel(axis, picture: np.ndarray | None, title: str, missing: str) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=8)
    if picture is None:
        axis.text(0.5, 0.5, missing, ha="center", va="center", fontsize=7, transform=axis.transAxes)
        return
    grey = picture.ndim == 2 or picture.shape[-1] == 1
    axis.imshow(picture.squeeze(-1) if picture.ndim == 3 and grey else picture, cmap="gray" if grey else None)


def draw_neighbours(
    queries: list[np.ndarray],
    answers: list[list[dict]],
    rows: list[np.ndarray],
    thumbnails: np.ndarray | None,
    out: Path,
) -> Path:
    """One row per query: the query image, then its neighbours' thumbnails with distance and labels under each.

    `answers` are each query's neighbours as `hashtune.retrieve --json` lists them, `rows` their database rows
    (the thumbnails'); without thumbnails a neighbour is its id in a blank panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max((len(neighbours) for neighbours in answers), default=0)
    figure, axes = plt.subplots(
        len(answers), columns, figsize=(1.3 * columns, 1.6 * len(answers)), squeeze=False, layout="constrained"
    )
    for axes_row, query, neighbours, database_rows in zip(axes, queries, answers, rows):
        _panel(axes_row[0], query, "query", "")
        for axis in axes_row[1:]:
            axis.axis("off")
        for axis, neighbour, row in zip(axes_row[1:], neighbours, database_rows):
            axis.axis("on")
            picture = None if thumbnails is None or row >= len(thumbnails) else thumbnails[row]
            labels = ",".join(str(label) for label in neighbour["labels"])
            _panel(axis, picture, f"d={neighbour['distance']} [{labels}]", f"id {neighbour['id']}")
    with atomic_file(out, "wb") as staged:
        figure.savefig(staged, dpi=100, format="png")
    plt.close(figure)
    return out
