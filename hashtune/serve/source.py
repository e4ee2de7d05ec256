"""Where the service's bundle comes from: a folder, or a version of a registered MLflow model (by number or alias).

Each replica resolves its `BundleSource` itself (`resolved`: an alias to the version it points to now) and
fetches that version's bundle (`fetch`), so replicas on other nodes need no shared disk for a registered
model; a replica following an alias resolves it again every few seconds and loads a new version in place.
A `--bundle` folder must be readable at the same path on every node.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hashtune.errors import InputError, NotFoundError
from hashtune.retrieval.bundle import verify_bundle

__all__ = ["BundleSource", "FetchedBundle", "resolve_version"]


@dataclass(frozen=True)
class BundleSource:
    """A bundle folder, or a registered model's version: by number, or by an alias (followed)."""

    folder: str | None = None
    model: str | None = None
    version: str | None = None
    alias: str | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if (self.folder is None) == (self.model is None):
            raise InputError("a bundle source is a folder or a registered model, exactly one of them")

    def resolved(self) -> BundleSource:
        """This source with the version its alias points to now (a folder or a fixed version: itself)."""
        if self.alias is None:
            return self
        from mlflow import MlflowClient

        version = resolve_version(MlflowClient(self.tracking_uri), self.model, alias=self.alias)
        return replace(self, version=version)

    @property
    def label(self) -> str:
        return Path(self.folder).name if self.folder else f"{self.model} v{self.version}"

    def as_config(self) -> dict:
        """The deployment's `user_config` (JSON): changing it reconfigures replicas in place."""
        return asdict(self)

    def fetch(self) -> FetchedBundle:
        """The bundle on this machine, checksums verified: the folder itself, or the version's artifacts downloaded."""
        if self.folder is not None:
            verify_bundle(self.folder)
            return FetchedBundle(Path(self.folder), None)
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts

        source = MlflowClient(self.tracking_uri).get_model_version(self.model, self.version).source
        scratch = Path(tempfile.mkdtemp(prefix="hashtune-bundle-"))
        try:
            folder = Path(
                download_artifacts(artifact_uri=source, dst_path=str(scratch), tracking_uri=self.tracking_uri)
            )
            verify_bundle(folder)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return FetchedBundle(folder, scratch)


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle folder and the scratch folder it was downloaded into (None for a user's folder: never removed)."""

    folder: Path
    scratch: Path | None

    def remove(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def resolve_version(client, model: str, *, alias: str | None = None, version: str | None = None) -> str:
    """The version number that `alias` points to, or `version` checked to exist (one-line errors otherwise)."""
    try:
        if alias is not None:
            return str(client.get_model_version_by_alias(model, alias).version)
        return str(client.get_model_version(model, version).version)
    except Exception as error:
        what = f"alias {alias!r}" if alias is not None else f"version {version!r}"
        raise NotFoundError(
            f"registered model {model!r} has no {what} at {client.tracking_uri} "
            f"({str(error).splitlines()[0][:120]}); export one with python -m hashtune.export --experiment E "
            f"--model-name {model}{' --alias ' + alias if alias else ''}"
        ) from None
