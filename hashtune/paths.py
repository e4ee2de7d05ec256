"""Where hashtune looks by default: the results folder and the search spaces shipped with the package."""

from __future__ import annotations

import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["MAX_NAME", "RESULTS_DIR", "SPACES_PACKAGE", "shipped_spaces", "check_name", "no_world_write"]

NAME = re.compile(r"[A-Za-z0-9._-]+")

RESULTS_DIR = Path("results")
"""Default stores (MLflow, Tune, Optuna) and studies, relative to the working directory."""

SPACES_PACKAGE = "hashtune.search_spaces"
"""The project's top-level `search_spaces/` folder, installed as this package (see pyproject.toml)."""


def shipped_spaces() -> dict[str, Traversable]:
    """`{name: YAML resource}` of every shipped space; works from a checkout and from an installed wheel."""
    folder = resources.files(SPACES_PACKAGE)
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


MAX_NAME = 100
"""The longest sweep name: it names folders and files (`<name>.journal`, `<name>.lock`, Tune's trial folders
below it), which a file system limits to 255 bytes."""


def check_name(name: str, what: str) -> str:
    """`name` if it is safe as a folder name (letters, digits, `.`, `_`, `-`; not `.` or `..`; at most
    `MAX_NAME` characters), else ValueError."""
    if not NAME.fullmatch(name or "") or set(name) == {"."}:
        raise ValueError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' (it names folders); e.g. ablations-2"
        )
    if len(name) > MAX_NAME:
        raise ValueError(
            f"{what} {name[:20]}... is {len(name)} characters long; at most {MAX_NAME} (it names folders and files)"
        )
    return name


def no_world_write() -> int:
    """Add `o-w` to this process's umask (every command calls it first): stores, checkpoints, bundles and studies
    are then never writable by other users, whatever umask the shell passed on; a stricter one is kept.
    Returns the umask now in force."""
    umask = os.umask(0) | 0o002
    os.umask(umask)
    return umask
