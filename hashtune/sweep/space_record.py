"""The record of what a sweep was started with (its space and whole config), kept on its parent run and compared
on `--resume`."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from hashtune.config import Config, to_flat_dict
from hashtune.sweep.space import SearchSpace

__all__ = ["SPACE_ARTIFACT", "space_record", "changed_keys", "saved_space_record"]

SPACE_ARTIFACT = "space.json"


def space_record(space: SearchSpace, base: Config) -> dict[str, Any]:
    """What a sweep was started with: the space after defaults, the whole config its trials start from
    (`config`: what `--resume` continues with, whatever the defaults are by then) and, for reading, where
    that config differs from the defaults of the day (`overrides`)."""
    config = to_flat_dict(base)
    defaults = to_flat_dict(Config())
    overrides = {key: value for key, value in config.items() if defaults[key] != value}
    return json.loads(
        json.dumps({"space": dataclasses.asdict(space), "overrides": overrides, "config": config}, default=str)
    )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat |= _flat(value, f"{prefix}{key}.")
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two space records (added and removed keys included; a key
    absent from one and null in the other is unchanged: a setting added since, at its default)."""
    old, new = _flat(saved), _flat(current)
    changed = {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    return sorted(key for key in changed if not any(other.startswith(f"{key}.") for other in changed))  # leaves only


def saved_space_record(client, run_id: str) -> dict[str, Any] | None:
    """The space record logged on a sweep's parent run, or None for a sweep started before records existed."""
    if SPACE_ARTIFACT not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return json.loads(Path(client.download_artifacts(run_id, SPACE_ARTIFACT, scratch)).read_text())
