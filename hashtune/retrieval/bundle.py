"""The retrieval bundle: a self-contained folder that `hashtune.export` writes and `Retriever` loads.

Files (all checksummed in `manifest.json`)::

    encoder.pt2            torch.export ExportedProgram: images (n, C, H, W) -> continuous codes (n, bits)
    state_dict.pt          the same weights as a TransHash state dict (best val/mAP epoch)
    config.yaml            the run's resolved config
    preprocess.json        what turns an image file into the encoder's input (channels, sizes, mean, std)
    database_codes.npy     packed codes, uint8 (n, ceil(bits/8)): `hashtune.metrics.pack_codes`
    database_ids.npy       one id per database image (dataset index, or its path for list files)
    database_labels.npy    multi-hot labels, uint8 (n, classes)
    query_codes.npy, query_ids.npy, query_labels.npy   the test queries, the same way (for --eval)
    index.faiss            faiss.IndexBinaryFlat over database_codes (d = 8 * bytes per code)
    manifest.json          provenance (MLflow run, metrics), versions, bit layout, sha256 of every file

Codes whose length is not a multiple of 8 are padded with zero bits, the same for every code, so
Hamming distances are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hashtune
from hashtune.errors import HashtuneError
from hashtune.paths import atomic_write_text

__all__ = ["FORMAT_VERSION", "BUNDLE_FILES", "BundleError", "write_manifest", "verify_bundle", "MANIFEST"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE_FILES = (
    "encoder.pt2",
    "state_dict.pt",
    "config.yaml",
    "preprocess.json",
    "index.faiss",
    "database_codes.npy",
    "database_ids.npy",
    "database_labels.npy",
    "query_codes.npy",
    "query_ids.npy",
    "query_labels.npy",
)
"""Every file a bundle holds besides its manifest; the Retriever and `--eval` read only these, each checksummed."""


class BundleError(HashtuneError, RuntimeError):
    """A bundle that cannot be used: missing, tampered with, or from incompatible versions (one line)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def write_manifest(folder: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write `manifest.json`: `content`, the versions, and the sha256 of every other file in `folder`."""
    files = {path.name: _sha256(path) for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST}
    import faiss

    manifest = {
        "format_version": FORMAT_VERSION,
        "versions": {
            "hashtune": hashtune.__version__,
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "numpy": np.__version__,
        },
        **content,
        "files": files,
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_bundle(folder: str | Path) -> dict[str, Any]:
    """The bundle's manifest, after checking every file's checksum and the versions; else `BundleError`."""
    folder = Path(folder)
    if (folder / MANIFEST).is_symlink() or not (folder / MANIFEST).is_file():
        what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
        raise BundleError(f"{folder} {what}: not a hashtune bundle; write one with python -m hashtune.export")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{folder / MANIFEST} is not valid JSON ({error}); re-export the bundle") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{folder}: bundle format {manifest.get('format_version')!r}, this hashtune reads format {FORMAT_VERSION}; "
            "re-export it"
        )
    exported, running = _torch_minor(manifest["versions"]["torch"]), _torch_minor(torch.__version__)
    if exported != running:
        raise BundleError(
            f"{folder}: exported with torch {exported}, running torch {running}; load it with torch {exported} or "
            "re-export it"
        )
    _check_files(folder, manifest.get("files"))
    return manifest


def _check_files(folder: Path, files) -> None:
    """Every bundle file is listed, is a plain regular file inside the folder, and matches its checksum.

    Errors name only manifest entries, never a path outside the bundle (nor whether one exists).
    """
    if not isinstance(files, dict):
        raise BundleError(f"{folder}: the manifest has no file list; re-export the bundle")
    for position, name in enumerate(files, start=1):
        if not isinstance(name, str) or name in ("", ".", "..") or name != Path(name).name or "\\" in name:
            raise BundleError(
                f"{folder}: manifest file entry {position} is not a plain file name inside the bundle; re-export it"
            )
    unlisted = [name for name in BUNDLE_FILES if name not in files]
    if unlisted:
        raise BundleError(f"{folder}: the manifest does not list {', '.join(unlisted)}; re-export the bundle")
    for name, expected in files.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(
                f"{folder}: {name} listed in the manifest is missing or not a regular file; re-export the bundle"
            )
        if _sha256(path) != expected:
            raise BundleError(
                f"{folder}: {name} does not match its manifest checksum (modified or corrupted); re-export the bundle"
            )
