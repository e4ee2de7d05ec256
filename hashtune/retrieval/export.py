"""Export a run's best checkpoint as a retrieval bundle (see `hashtune.retrieval.bundle` for its files).

    python -m hashtune.export --experiment NAME [--metric val/mAP] [--run-id ID] --out BUNDLE
    python -m hashtune.export --run-dir runs/digits32 --out BUNDLE      # a plain `hashtune.train` run

The run is the best finished one of the sweep by a validation metric (never by test). The encoder
gets the weights of the run's best `val/mAP` epoch, the same weights its `test/mAP` was measured
with, so `python -m hashtune.retrieve --eval` on the bundle reproduces that number. The bundle is
written to a temporary folder beside `--out` and renamed into place, so a crash leaves no half
bundle; an existing `--out` is never overwritten. With `--experiment`, the bundle is logged on the
run (artifacts `bundle/`) and registered as a version of the MLflow model `--model-name`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn

from hashtune.config import Config, config_from_dict, require_val_metric, save_config
from hashtune.data import Splits
from hashtune.data.datasets import native_size
from hashtune.errors import HashtuneError
from hashtune.metric_names import SELECTION_METRIC, TEST_MAP
from hashtune.metrics import pack_codes, retrieval_metrics
from hashtune.paths import RESULTS_DIR, no_world_write, report_disk_full
from hashtune.retrieval.bundle import write_manifest
from hashtune.retrieval.index import INDEX_TYPES, build_index, check_nlist, index_params
from hashtune.retrieval.thumbnails import THUMBNAILS_FILE, make_thumbnails
from hashtune.tracking import best_finished_run, parse_pick, resolve_tracking
from hashtune.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from hashtune.train.model import preprocessing
from hashtune.train.outputs import read_metrics
from hashtune.train.trainer import build_data, build_model, input_size

__all__ = ["HashEncoder", "ExportError", "best_run", "export_bundle", "main"]


class ExportError(HashtuneError, RuntimeError):
    """An export that cannot be done as asked (one line naming the run, file or value)."""


class HashEncoder(nn.Module):
    """images (n, C, H, W), preprocessed -> continuous codes (n, bits) in (-1, 1); sign gives the binary code."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).codes


def best_run(client, experiment: str, metric: str = SELECTION_METRIC, run_id: str | None = None, picks: tuple = ()):
    """The MLflow run to export: `run_id`, or the finished trial run with the highest `metric` (a val/* metric)
    among those meeting every `picks` constraint (`tracking.parse_pick`)."""
    require_val_metric(metric)
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise ExportError(f"no MLflow run with id {run_id!r} at {client.tracking_uri}") from None
        found = client.get_experiment_by_name(experiment)
        if (
            found is None or run.info.experiment_id != found.experiment_id
        ):  # the manifest would name the wrong experiment
            actual = client.get_experiment(run.info.experiment_id).name
            raise ExportError(
                f"--run-id {run_id} belongs to experiment {actual!r}, not {experiment!r}; give --experiment {actual}"
            )
        return run
    try:
        return best_finished_run(client, experiment, metric, picks)
    except LookupError as error:
        raise ExportError(f"{error}; nothing to export") from None


def _checkpoint_of(run) -> dict:
    """The run's checkpoint state, from the Tune/Train checkpoint its `hashtune.checkpoint` tag points to."""
    from ray.train import Checkpoint

    location = run.data.tags.get("hashtune.checkpoint")
    if not location:
        raise ExportError(f"run {run.info.run_id} has no hashtune.checkpoint tag (it never reported a checkpoint)")
    try:
        with Checkpoint(location).as_directory() as folder:
            return load_checkpoint(Path(folder) / CHECKPOINT_NAME)
    except (CheckpointError, FileNotFoundError, OSError) as error:
        raise ExportError(
            f"run {run.info.run_id}: cannot read its checkpoint at {location}: {str(error).splitlines()[0]}"
        ) from None


def _encode_split(encoder: HashEncoder, dataset, batch_size: int = 256) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        return torch.cat([encoder(images) for images, _, _ in loader])


def _ids(dataset) -> np.ndarray:
    """Database/query ids: the image's path for file datasets, else its index in the dataset."""
    if dataset.source.paths is not None:
        return np.array([str(Path(dataset.source.paths[i])) for i in dataset.indices])
    return dataset.indices.copy()


def export_bundle(
    state: dict,
    out: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
    index: str = "flat",
    index_options: dict[str, Any] | None = None,
    thumbnails: bool = False,
) -> dict[str, Any]:
    """Write the bundle of checkpoint `state` to `out` (must not exist); returns its manifest.

    `provenance` (MLflow run id, experiment, the run's metrics) goes into the manifest as is; `index` is the
    faiss index type (`flat`, `ivf`, `hnsw`, see `hashtune.retrieval.index`) with its `index_options`;
    `thumbnails` adds the database images' thumbnails (`hashtune.retrieval.thumbnails`).
    """
    index_spec = {"type": index, **index_params(index, **(index_options or {}))}
    out = Path(out)
    if out.exists():
        raise ExportError(f"--out {out} already exists; pick a new folder (an existing bundle is never overwritten)")
    encoded = _encode_and_evaluate(state, index_spec)
    return _stage_bundle(encoded, out, index_spec, provenance or {}, thumbnails)


@dataclass
class _Encoded:
    """The checkpoint's model rebuilt, its test queries and database encoded, and the test metrics of those codes."""

    config: Config
    data: Any
    model: Any
    encoder: HashEncoder
    query: torch.Tensor
    database: torch.Tensor
    evaluation: dict[str, Any]
    test_map: float


def _encode_and_evaluate(state: dict, index_spec: dict[str, Any]) -> _Encoded:
    config = config_from_dict(state["config"])
    data = build_data(config, Splits.from_arrays(state["splits"]))
    if index_spec["type"] == "ivf":  # before minutes of encoding
        check_nlist(index_spec["nlist"], len(data.database))
    model = build_model(config, data)
    model.load_state_dict(state["best"]["model"] if state.get("best") else state["model"])
    encoder = HashEncoder(model).eval()
    query, database = _encode_split(encoder, data.test_query), _encode_split(encoder, data.database)
    binary = [torch.where(codes >= 0, 1.0, -1.0) for codes in (query, database)]
    evaluation = {"topk": config.eval.topk if config.eval.topk is not None else data.topk, "ties": config.eval.ties}
    metrics = retrieval_metrics(*binary, data.test_query.labels, data.database.labels, **evaluation)
    return _Encoded(config, data, model, encoder, query, database, evaluation, metrics.map)


def _stage_bundle(
    encoded: _Encoded, out: Path, index_spec: dict[str, Any], provenance: dict, thumbnails: bool
) -> dict[str, Any]:
    """The bundle written to a temporary folder beside `out`, then renamed into place: whole, or not there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    e = encoded
    try:
        _write_files(staging, e.encoder, e.model, e.config, e.data, e.query, e.database)
        index = build_index(pack_codes(e.database), index_spec["type"], index_spec)
        faiss.write_index_binary(index, str(staging / "index.faiss"))
        if thumbnails:
            np.save(staging / THUMBNAILS_FILE, make_thumbnails(e.data.database))
        manifest = write_manifest(
            staging,
            {
                "bits": e.config.model.bits,
                "head_bits": list(e.model.head_bits),
                "num_database": len(e.database),
                "num_queries": len(e.query),
                "bundle_test_mAP": e.test_map,
                "evaluation": e.evaluation,
                "index": index_spec,
                "provenance": provenance,
            },
        )
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from other users
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_files(
    folder: Path, encoder: HashEncoder, model: nn.Module, config, data, query: torch.Tensor, database: torch.Tensor
) -> None:
    size = input_size(config)
    example = torch.zeros(2, data.channels, size, size)
    program = torch.export.export(encoder, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(program, folder / "encoder.pt2")
    torch.save(model.state_dict(), folder / "state_dict.pt")
    save_config(config, folder / "config.yaml")
    source = data.database.source
    preprocess = {
        "channels": data.channels,
        "native_size": native_size(source),
        "img_size": size,
        **preprocessing(config).as_dict(),
    }
    (folder / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
    for prefix, codes, dataset in (("database", database, data.database), ("query", query, data.test_query)):
        np.save(folder / f"{prefix}_codes.npy", pack_codes(codes))
        np.save(folder / f"{prefix}_ids.npy", _ids(dataset))
        np.save(folder / f"{prefix}_labels.npy", dataset.labels.numpy().astype(np.uint8))


def _log_to_mlflow(client, run, out: Path, model_name: str, alias: str | None) -> str | None:
    """Log the bundle on the run and register it as a model version (under `alias` when given).

    Returns the version, or None where the store has no registry.
    """
    client.log_artifacts(run.info.run_id, str(out), artifact_path="bundle")
    try:
        try:
            client.create_registered_model(model_name)
        except Exception as error:
            if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise
        version = client.create_model_version(
            model_name, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id
        )
        if alias:
            client.set_registered_model_alias(model_name, alias, version.version)
        return version.version
    except Exception as error:
        print(f"hashtune.export: bundle logged, not registered ({str(error).splitlines()[0][:160]})", file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hashtune.export", description="Export a run's best checkpoint as a retrieval bundle."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="the sweep's MLflow experiment: export its best finished run")
    source.add_argument("--run-dir", type=Path, help="a run folder of python -m hashtune.train (holds checkpoint.pt)")
    parser.add_argument("--run-id", help="export this MLflow run instead of the best one (with --experiment)")
    parser.add_argument(
        "--metric", default=SELECTION_METRIC, help="validation metric that picks the best run (default: val/best_mAP)"
    )
    parser.add_argument(
        "--pick",
        action="append",
        default=[],
        help="only runs meeting this, e.g. 'code/bits<=32' or 'cost/encode_ms<0.5' (repeatable; chosen on --metric)",
    )
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite results/mlflow.db)")
    parser.add_argument("--model-name", default="hashtune", help="MLflow registered model name (default: hashtune)")
    parser.add_argument(
        "--alias",
        help="point this alias of the registered model at the new version (hashtune.serve --alias follows it)",
    )
    parser.add_argument(
        "--thumbnails", action="store_true", help="store small database thumbnails in the bundle (for the served page)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to create (must not exist)")
    parser.add_argument(
        "--index",
        choices=INDEX_TYPES,
        default="flat",
        help="faiss index: flat (exact, the default under 1M codes), ivf or hnsw (approximate, see README)",
    )
    parser.add_argument("--nlist", type=int, help="ivf: inverted lists (default about 4 sqrt(n))")
    parser.add_argument(
        "--nprobe", type=int, help=f"ivf: lists searched per query (default {index_params('ivf')['nprobe']})"
    )
    parser.add_argument("--hnsw-m", type=int, dest="m", help="hnsw: links per node (default 32)")
    parser.add_argument("--ef-search", type=int, help="hnsw: candidates per search (default 64)")
    return parser


def _index_options(args) -> dict[str, Any]:
    options = {"nlist": args.nlist, "nprobe": args.nprobe, "m": args.m, "ef_search": args.ef_search}
    for name, value in options.items():
        if value is not None and value < 1:
            raise ExportError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return options


def check_alias(alias: str) -> str:
    """A registered-model alias MLflow accepts: letters, digits, '_' and '-', neither 'latest' nor v<number>."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ExportError(
            f"--alias {alias!r} is not a model alias: use letters, digits, '_' or '-' (not 'latest' nor v<number>)"
        )
    return alias


def _export_run_dir(args) -> dict[str, Any]:
    state = load_checkpoint(args.run_dir)
    provenance = {"run_dir": str(args.run_dir.absolute())}
    if (args.run_dir / "metrics.json").is_file():
        provenance["run_metrics"] = read_metrics(args.run_dir / "metrics.json")
    return export_bundle(
        state,
        args.out,
        provenance=provenance,
        index=args.index,
        index_options=_index_options(args),
        thumbnails=args.thumbnails,
    )


def _export_best_run(args) -> dict[str, Any]:
    """The sweep's best run (under `--pick`), exported, logged on the run and registered (with `--alias`)."""
    from mlflow import MlflowClient

    uri, _ = resolve_tracking(args.mlflow_uri, RESULTS_DIR, create=False)
    client = MlflowClient(uri)
    picks = tuple(parse_pick(text) for text in args.pick)
    if picks and args.run_id:
        raise ExportError("--pick chooses among runs; --run-id names one already: give one of them")
    run = best_run(client, args.experiment, args.metric, args.run_id, picks)
    provenance = {
        "mlflow_run_id": run.info.run_id,
        "experiment": args.experiment,
        "tracking_uri": uri,
        "selected_by": args.metric,
        "picked_among": list(args.pick),
        "run_metrics": dict(run.data.metrics),
    }
    manifest = export_bundle(
        _checkpoint_of(run),
        args.out,
        provenance=provenance,
        index=args.index,
        index_options=_index_options(args),
        thumbnails=args.thumbnails,
    )
    version = _log_to_mlflow(client, run, args.out, args.model_name, args.alias)
    if version is not None:
        alias = f" (alias {args.alias!r})" if args.alias else ""
        print(f"registered as MLflow model {args.model_name!r} version {version}{alias}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_world_write()
    try:
        if args.alias is not None:
            if args.run_dir is not None:
                raise ExportError(
                    "--alias names a registered model version: give --experiment (a --run-dir is not registered)"
                )
            check_alias(args.alias)
        manifest = _export_run_dir(args) if args.run_dir is not None else _export_best_run(args)
    except HashtuneError as error:
        print(f"hashtune.export: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the staging folder beside --out is removed: nothing half-written is left
        return report_disk_full("hashtune.export", error, args.out)
    run_map = manifest["provenance"].get("run_metrics", {}).get(TEST_MAP)
    summary = (
        f"bundle written to {args.out} ({manifest['num_database']} database codes of {manifest['bits']} bits); "
        f"test mAP from its codes {manifest['bundle_test_mAP']:.6f}"
    )
    print(summary + (f" (run's test/mAP {run_map:.6f})" if run_map is not None else ""))
    return 0
