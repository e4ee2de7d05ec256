"""Ray Train wrapping the plain trainer: DDP results, exact distributed evaluation, worker restore."""

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from ray_helpers import local_ray, train_workers

from hashtune.config import config_from_dict, load_config
from hashtune.data import Splits, build_retrieval_data
from hashtune.train.checkpoint import load_checkpoint
from hashtune.train.distributed import fit_distributed
from hashtune.train.runtime import LocalRuntime
from hashtune.train.steps import sharded_loader
from hashtune.train.trainer import build_model, evaluate

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-distributed")]

SMALL = [
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.batch_size=50",
    "train.lr=5e-3",
    "train.warmup_epochs=1",
]


@pytest.fixture(scope="module")
def ray_session():
    with local_ray(num_cpus=2):
        yield


def _single_process_val_map(run_dir: Path) -> float:
    state = load_checkpoint(run_dir)
    config = config_from_dict(state["config"])
    splits = Splits(**{name: tensor.numpy() for name, tensor in state["splits"].items()})
    data = build_retrieval_data(
        name=config.data.name, seed=config.data.seed, img_size=config.model.img_size, splits=splits
    )
    model = build_model(config, data)
    model.load_state_dict(state["model"])
    runtime = LocalRuntime(torch.device("cpu"))
    loaders = [
        sharded_loader(d, runtime, batch_size=97, shuffle=False, seed=0, num_workers=0)
        for d in (data.val_query, data.database)
    ]
    return evaluate(model, *loaders, runtime=runtime, config=config).map


def test_two_worker_ddp_run_matches_single_process_evaluation(ray_session, tmp_path):
    # 200 val queries and 1,297 database images do not split evenly over 2 workers: padding is exercised
    config = load_config(overrides=SMALL + ["train.epochs=4", "train.eval_every=2"])
    metrics = fit_distributed(config, run_dir=tmp_path / "run", workers=2)
    assert {"val/mAP", "test/mAP", "test/precision_at_100"} <= metrics.keys()
    assert metrics["epoch"] == 4 and metrics["resumed_at_epoch"] == 0
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val/mAP"]) == pytest.approx(_single_process_val_map(tmp_path / "run"), abs=1e-9)
    # cost is gathered from every worker: the sum is about twice the main worker's own CPU-seconds
    assert 1.6 < metrics["cost/cpu_seconds"] / metrics["cost/cpu_seconds_main"] < 2.5
    assert metrics["cost/gpu_seconds"] == 0.0 and metrics["cost/images_seen"] == 4 * 500


def _checkpoint_registered(storage: Path) -> bool:
    # Train V2's controller writes this snapshot once it has registered a reported checkpoint; a
    # checkpoint folder on disk alone may not be registered yet when the worker dies
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, json.JSONDecodeError):
            pass
    return False


def _kill_one_worker_after_a_registered_checkpoint(storage: Path, killed: list, deadline: float) -> None:
    while time.time() < deadline:
        if _checkpoint_registered(storage):
            workers = train_workers("ALIVE")
            if workers:
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed.append(workers[-1].pid)
                return
        time.sleep(0.2)


def test_killed_worker_restores_from_last_checkpoint(ray_session, tmp_path):
    config = load_config(overrides=SMALL + ["train.epochs=30", "train.eval_every=2"])
    storage = tmp_path / "storage"
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_one_worker_after_a_registered_checkpoint, args=(storage, killed, time.time() + 300)
    )
    killer.start()
    metrics = fit_distributed(config, run_dir=tmp_path / "run", workers=2, storage=str(storage), max_failures=2)
    killer.join()
    assert killed, "no worker was killed"
    assert metrics["epoch"] == 30
    assert metrics["resumed_at_epoch"] >= 2, "the restarted group should continue from a checkpoint, not epoch 0"
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(row["epoch"]) for row in rows] == list(range(1, 31))
