"""Small pictures of the database images, stored in a bundle for people to look at (the service's page, `--show`).

`hashtune.export --thumbnails` writes `thumbnails.npy`: uint8 (n, S, S, C), one row per database code in
the same order, S = min(64, the images' own size) (digits keep their 8 x 8 pixels; the page scales them
up without smoothing). The file is checksummed in the manifest like every other; a bundle without it is
whole, it only has nothing to show.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["THUMBNAILS_FILE", "THUMBNAIL_SIZE", "make_thumbnails", "load_thumbnails", "png_bytes"]

THUMBNAILS_FILE = "thumbnails.npy"
THUMBNAIL_SIZE = 64


def _fitted(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR))


def make_thumbnails(dataset, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """uint8 (n, S, S, C) thumbnails of a `HashingDataset`'s images, in its order; centre-cropped to a square."""
    source = dataset.source
    if source.pixels is not None:
        pixels = source.pixels[dataset.indices]
        height, width = pixels.shape[1:3]
        if height == width and height <= size:
            return np.ascontiguousarray(pixels)
        mode = "L" if pixels.shape[3] == 1 else "RGB"
        fitted = [_fitted(Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode), size) for image in pixels]
        return np.stack(fitted).reshape(len(pixels), size, size, pixels.shape[3])
    rows = []
    for index in dataset.indices:
        with Image.open(source.paths[index]) as image:
            rows.append(_fitted(image.convert("RGB"), size))
    return np.stack(rows)


def load_thumbnails(folder: str | Path, manifest: dict) -> np.ndarray | None:
    """The bundle's thumbnails (memory-mapped), or None when it was exported without them."""
    if THUMBNAILS_FILE not in manifest.get("files", {}):
        return None
    return np.load(Path(folder) / THUMBNAILS_FILE, mmap_mode="r", allow_pickle=False)


def png_bytes(thumbnail: np.ndarray) -> bytes:
    """One (S, S, C) uint8 thumbnail as PNG bytes."""
    image = Image.fromarray(thumbnail.squeeze(-1) if thumbnail.shape[-1] == 1 else np.asarray(thumbnail))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
