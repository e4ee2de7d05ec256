"""Where hashtune looks by default: the results folder and the search spaces shipped with the package."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["RESULTS_DIR", "SPACES_PACKAGE", "shipped_spaces"]

RESULTS_DIR = Path("results")
"""Default stores (MLflow, Tune, Optuna) and studies, relative to the working directory."""

SPACES_PACKAGE = "hashtune.search_spaces"
"""The project's top-level `search_spaces/` folder, installed as this package (see pyproject.toml)."""


def shipped_spaces() -> dict[str, Traversable]:
    """`{name: YAML resource}` of every shipped space; works from a checkout and from an installed wheel."""
    folder = resources.files(SPACES_PACKAGE)
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}
