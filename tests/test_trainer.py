"""The plain trainer on digits: learning, both strategies, exact resume, failures, the CLI."""

import csv
import json

import pytest
import torch
from conftest import with_overrides

from hashtune.config import load_config
from hashtune.data import build_retrieval_data
from hashtune.train.checkpoint import CheckpointError, load_checkpoint
from hashtune.train.cli import main as train_main
from hashtune.train.runtime import LocalRuntime
from hashtune.train.steps import NonFiniteLossError, sharded_loader, warmup_cosine
from hashtune.train.trainer import build_model, evaluate, fit

SMALL = [
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.batch_size=50",
    "train.lr=5e-3",
    "train.warmup_epochs=1",
    "train.device=cpu",
]


def small_config(*overrides):
    return load_config(overrides=with_overrides(SMALL, list(overrides)))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def _initial_val_map(config):
    torch.manual_seed(config.train.seed)
    data = build_retrieval_data(name="digits", seed=config.data.seed, img_size=8)
    runtime = LocalRuntime(torch.device("cpu"))
    loaders = [
        sharded_loader(d, runtime, batch_size=256, shuffle=False, seed=0, num_workers=0)
        for d in (data.val_query, data.database)
    ]
    return evaluate(build_model(config, data), *loaders, runtime=runtime, config=config).map


def test_short_symmetric_run_learns_and_writes_its_folder(tmp_path):
    config = small_config("train.epochs=15", "train.eval_every=5")
    metrics = fit(config, run_dir=tmp_path)
    assert metrics["val/mAP"] > _initial_val_map(config) + 0.2
    assert {"test/mAP", "test/precision_at_100", "test/p_r2", "throughput/images_per_s", "train/pair"} <= metrics.keys()
    for name in (
        "config.yaml",
        "splits.npz",
        "checkpoint.pt",
        "history.csv",
        "metrics.json",
        "pr_curve.png",
        "pr_curve.csv",
    ):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert len(rows) == 15 and rows[4]["val/mAP"] and not rows[3]["val/mAP"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test/mAP"] == metrics["test/mAP"]


def test_asymmetric_run_learns_database_codes(tmp_path):
    config = small_config(
        "train.strategy=asymmetric", "train.epochs=20", "train.eval_every=10", "train.asym_sample_size=200"
    )
    metrics = fit(config, run_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    codes = state["strategy"]["database_codes"]
    # ADSH's evaluation: training images in the database retrieved by their learned B, logged beside the encoder's
    assert metrics["test/mAP"] == metrics["test/mAP_encoder"] and 0.0 < metrics["test/mAP_learned"] <= 1.0
    assert metrics["test/mAP_learned"] != metrics["test/mAP_encoder"]
    assert codes.shape == (500, 32) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert metrics["val/mAP"] > _initial_val_map(config) + 0.2
    assert "train/asym" in metrics


class _StopAfterFirstReport(Exception):
    pass


def _crash_after_first_report(metrics, checkpoint_dir):
    raise _StopAfterFirstReport


@pytest.mark.parametrize("strategy", ["symmetric", "asymmetric"])
def test_resume_continues_exactly(tmp_path, strategy):
    config = small_config(
        f"train.strategy={strategy}", "train.epochs=4", "train.eval_every=2", "train.asym_sample_size=100"
    )
    fit(config, run_dir=tmp_path / "whole")
    with pytest.raises(_StopAfterFirstReport):
        fit(config, run_dir=tmp_path / "cut", runtime=LocalRuntime(torch.device("cpu"), _crash_after_first_report))
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 2
    resumed = fit(config, run_dir=tmp_path / "cut", resume_from=tmp_path / "cut")
    whole = list(csv.DictReader((tmp_path / "whole" / "history.csv").open()))
    cut = list(csv.DictReader((tmp_path / "cut" / "history.csv").open()))
    assert [row["train/loss"] for row in cut] == [row["train/loss"] for row in whole]
    assert resumed["test/mAP"] == json.loads((tmp_path / "whole" / "metrics.json").read_text())["test/mAP"]


def test_non_finite_loss_fails_the_run(tmp_path):
    config = small_config(
        "train.optimizer=sgd", "train.lr=1e12", "train.grad_clip=0", "train.epochs=3", "train.warmup_epochs=0"
    )
    with pytest.raises(NonFiniteLossError, match=r"train/loss became (nan|inf) at epoch \d+ step \d+"):
        fit(config, run_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage):
    fit(small_config("train.epochs=1", "train.warmup_epochs=0"), run_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x04garbage" * 10)
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is not a (readable )?hashtune checkpoint") as error:
        load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


def test_cli_writes_run_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*SMALL, "train.epochs=2", "train.eval_every=1", "--out", str(out), "--no-progress"]) == 0
    assert "test/mAP" in capsys.readouterr().out
    assert train_main(["model.bitz=3", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        "hashtune.train: error: unknown config key 'model.bitz'; valid keys: model.backbone, model.bits, model.depth, "
        "model.drop_path_rate, model.dual_stream, model.embed_dim, model.img_size, model.k_groups, model.num_heads, "
        "model.patch_size, model.pretrained"
    )
    assert train_main(["--resume", str(tmp_path / "absent")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err
    assert train_main(["model.bits=64", "--resume", str(out)]) == 2
    assert "overrides differ" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_each_image_is_encoded_once_per_evaluation_and_the_code_costs_come_from_those_passes(tmp_path, monkeypatch):
    """Evaluation encodes the queries and the database once each (the test pass reuses the database codes it
    hands the strategy), and `cost/encode_ms` times the query encoding evaluation already does: no extra pass."""
    import hashtune.train.trainer as trainer

    encoded, models = [], []

    def counted(config, data):
        model = build_model(config, data)
        models.append(model)
        model.register_forward_pre_hook(lambda module, args: None if module.training else encoded.append(len(args[0])))
        return model

    monkeypatch.setattr(trainer, "build_model", counted)
    config = small_config("train.epochs=2", "train.eval_every=1", "train.warmup_epochs=0")
    metrics = fit(config, run_dir=tmp_path)
    splits = load_checkpoint(tmp_path)["splits"]
    val, test, database = (len(splits[name]) for name in ("val_query", "test_query", "database"))
    assert sum(encoded) == 2 * (val + database) + (test + database)
    params = sum(parameter.numel() for parameter in models[0].parameters())
    assert metrics["code/bits"] == 32 and metrics["code/bytes"] == 4 and metrics["model/params"] == params
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert all(float(row["cost/encode_ms"]) > 0 for row in rows) and 0 < metrics["cost/encode_ms"] < 1000


def test_no_validation_queries_reports_the_last_epoch_and_says_so(tmp_path):
    config = small_config("train.epochs=2", "train.eval_every=1", "data.val_per_class=0")
    metrics = fit(config, run_dir=tmp_path)
    assert metrics["selection/last_epoch"] == 1.0 and metrics["best_epoch"] == 2 and "val/best_mAP" not in metrics
    assert len(load_checkpoint(tmp_path)["splits"]["val_query"]) == 0


def test_list_file_protocols_log_the_literatures_cut_off(listfile_root, tmp_path):
    from hashtune.data import protocol_topk

    assert [protocol_topk("listfile", p) for p in ("nuswide21", "imagenet100", "coco", "")] == [5000, 1000, 5000, None]
    assert protocol_topk("cifar10") is None
    config = load_config(
        overrides=[
            "data.name=listfile",
            f"data.root={listfile_root}",
            "data.protocol=imagenet100",
            "model.img_size=8",
            "model.patch_size=4",
            "model.depth=1",
            "model.embed_dim=16",
            "train.warmup_epochs=0",
            "model.num_heads=2",
            "train.epochs=1",
        ]
    )
    metrics = fit(config, run_dir=tmp_path)
    assert metrics["test/mAP_at_1000"] == metrics["test/mAP"]


def test_a_run_is_bit_identical_at_the_same_thread_count(tmp_path):
    """Per-seed numbers reproduce exactly on the same CPU at the same intra-op thread count (a sweep pins it)."""
    from hashtune.sweep.trial import environment_tags, pin_threads

    previous = torch.get_num_threads()
    try:
        assert pin_threads(1) == 1
        config = small_config("train.epochs=3", "train.eval_every=1")
        first, second = fit(config, run_dir=tmp_path / "a"), fit(config, run_dir=tmp_path / "b")
    finally:
        torch.set_num_threads(previous)
    for key in ("train/loss", "val/mAP", "test/mAP", "test/mAP_ties_average"):
        assert first[key] == second[key], key
    tags = environment_tags(1)
    assert (
        tags["hashtune.torch_threads"] == "1"
        and tags["hashtune.cpu_model"]
        and tags["hashtune.version.torch"].startswith("2.")
    )
