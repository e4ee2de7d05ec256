"""Image files for tests, written as a user's would be."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from hashtune.data import load_source


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes that claims `width` x `height` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def digit_pngs(bundle: Path, folder: Path, count: int = 5) -> list[str]:
    """The bundle's first test queries written as 8-bit grayscale PNGs, like a user's files."""
    ids = np.load(bundle / "query_ids.npy")[:count]
    pixels = load_source("digits").pixels
    paths = []
    for identifier in ids:
        path = folder / f"digit_{identifier}.png"
        Image.fromarray(pixels[identifier, :, :, 0], mode="L").save(path)
        paths.append(str(path))
    return paths
