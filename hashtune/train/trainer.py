"""The hashing trainer: a plain loop that runs in one process; Ray Train and Ray Tune wrap it.

`fit` reads top to bottom: build data, model, optimizer and the training strategy (`SymmetricStrategy`,
TransHash, or `AsymmetricStrategy`, He & Wei / ADSH); restore a checkpoint if asked; then per epoch the
strategy's `train_one_epoch`, and every `train.eval_every` epochs `evaluate` on the val queries, a
checkpoint and a report. The test
queries are evaluated once, at the end, with the weights that had the best `val/mAP`.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import numpy as np
import timm.optim
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hashtune.config import Config, ConfigError, check_schedule, config_from_dict, save_config, to_flat_dict
from hashtune.data import RetrievalData, Splits, build_retrieval_data
from hashtune.metric_names import SELECTION_METRIC
from hashtune.metrics import RetrievalMetrics, retrieval_metrics
from hashtune.train import outputs
from hashtune.train.asymmetric import AsymmetricStrategy
from hashtune.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hashtune.train.cost import CostMeter
from hashtune.train.model import TransHash, create_backbone, preprocessing
from hashtune.train.runtime import LocalRuntime, resolve_device
from hashtune.train.steps import autocast, sharded_loader, warmup_cosine
from hashtune.train.symmetric import SymmetricStrategy

__all__ = ["STRATEGIES", "build_data", "build_model", "build_optimizer", "encode", "evaluate", "fit", "input_size"]

STRATEGIES = {"symmetric": SymmetricStrategy, "asymmetric": AsymmetricStrategy}


def build_model(config: Config, data: RetrievalData) -> TransHash:
    """The TransHash network for `config.model` on `data`'s channels and classes."""
    m = config.model
    backbone = create_backbone(
        m.backbone,
        pretrained=m.pretrained,
        img_size=m.img_size,
        patch_size=m.patch_size,
        depth=m.depth,
        embed_dim=m.embed_dim,
        num_heads=m.num_heads,
        in_chans=data.channels,
        drop_path_rate=m.drop_path_rate,
    )
    return TransHash(
        backbone=backbone, bits=m.bits, k_groups=m.k_groups, num_classes=data.num_classes, dual_stream=m.dual_stream
    )


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on norms, biases and embeddings."""
    t = config.train
    extra = {"momentum": 0.9} if t.optimizer == "sgd" else {}
    return timm.optim.create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, **extra)


@torch.no_grad()
def encode(
    model: nn.Module, loader: DataLoader, runtime: LocalRuntime, config: Config, timings: list[float] | None = None
) -> torch.Tensor:
    """Binary codes in {-1, +1} of the loader's whole dataset, in dataset order, on the CPU.

    Each rank encodes its shard; codes and positions are gathered from every rank and put back in
    order, so sampler padding neither duplicates nor drops an item. Given `timings`, each batch's forward
    time per image (ms: the network alone, synchronised on a GPU, under the run's autocast) is appended to it.
    """
    model.eval()
    codes, positions = [], []
    for images, _, position in loader:
        images = images.to(runtime.device, non_blocking=True)
        start = _synchronized_clock(runtime.device) if timings is not None else 0.0
        with autocast(config, runtime.device):
            out = model(images)
        if timings is not None:
            timings.append((_synchronized_clock(runtime.device) - start) * 1000.0 / len(images))
        codes.append(torch.where(out.codes.float() >= 0, 1.0, -1.0))
        positions.append(position.to(runtime.device))
    local_codes, local_positions = torch.cat(codes), torch.cat(positions)
    all_codes = runtime.all_gather(local_codes).cpu()
    all_positions = runtime.all_gather(local_positions).cpu()
    ordered = torch.empty(len(loader.dataset), all_codes.shape[1])
    ordered[all_positions] = all_codes
    return ordered


def _synchronized_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def median_ms(timings: list[float]) -> float:
    """`cost/encode_ms`: the median over batches of forward time per image (`encode`'s timings)."""
    return float(statistics.median(timings)) if timings else float("nan")


def evaluate(
    model: nn.Module,
    query_loader: DataLoader,
    database_loader: DataLoader,
    *,
    runtime: LocalRuntime,
    config: Config,
    database_codes: torch.Tensor | None = None,
    protocol_topk: int | None = None,
    query_timings: list[float] | None = None,
) -> RetrievalMetrics:
    """Retrieval metrics of the query set against the database (codes from the network unless given).

    The cut-off is `eval.topk`, else the protocol's (`protocol_topk`, None for the whole database);
    `query_timings` collects the query encoding's times (`encode`).
    """
    query_codes = encode(model, query_loader, runtime, config, query_timings)
    if database_codes is None:
        database_codes = encode(model, database_loader, runtime, config)
    return retrieval_metrics(
        query_codes,
        database_codes,
        query_loader.dataset.labels,
        database_loader.dataset.labels,
        topk=config.eval.topk if config.eval.topk is not None else protocol_topk,
        precision_at=(config.eval.precision_at,),
        radii=(2,),
        ties=config.eval.ties,
    )


def _restore(
    config: Config, resume_from: Path | None, device: torch.device
) -> tuple[Config, dict | None, Splits | None]:
    if resume_from is None:
        return config, None, None
    state = load_checkpoint(resume_from, map_location=device)
    saved = config_from_dict(state["config"])
    if saved != config:
        changed = {k: v for k, v in to_flat_dict(config).items() if to_flat_dict(saved)[k] != v}
        raise ConfigError(f"--resume uses the checkpoint's config; these overrides differ from it: {changed}")
    splits = Splits.from_arrays(state["splits"])
    return saved, state, splits


def fit(
    config: Config,
    *,
    runtime: LocalRuntime | None = None,
    run_dir: str | Path,
    resume_from: str | Path | None = None,
    show_progress: bool = False,
) -> dict[str, float]:
    """Train `config`, writing the run folder on the main rank; returns the final metrics.

    Args:
        config: the resolved configuration.
        runtime: where the loop runs (default: this process on `train.device`).
        run_dir: folder for config.yaml, splits.npz, checkpoint.pt, history.csv, metrics.json, pr_curve.png,
        pr_curve.csv.
        resume_from: a run folder or checkpoint file to continue from (its config must equal `config`).
        show_progress: a progress bar over epochs.
    """
    if resume_from is None:
        check_schedule(config)  # a run started before the rule existed may still be continued
    runtime = runtime or LocalRuntime(resolve_device(config.train.device))
    run_dir = Path(run_dir)
    config, state, splits = _restore(config, Path(resume_from) if resume_from else None, runtime.device)
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    data = build_data(config, splits)
    model = build_model(config, data)
    run = _TrainingRun(config, data, model, runtime, run_dir)
    if state is not None:
        run.load_state(state)
        run.resumed_at_epoch = run.epoch
    elif runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        data.splits.save(run_dir / "splits.npz")
    torch.manual_seed(config.train.seed * 1009 + runtime.rank + run.epoch)  # per-rank augmentation/dropout stream
    if state is not None:
        set_rng_state(state["rng"])
    epochs = tqdm(
        range(run.epoch, config.train.epochs),
        initial=run.epoch,
        total=config.train.epochs,
        disable=not show_progress,
        desc="epochs",
    )
    for epoch in epochs:
        row = run.train_epoch(epoch)
        last = epoch + 1 == config.train.epochs
        evaluated = last or (epoch + 1) % config.train.eval_every == 0
        if evaluated:
            row |= run.validate()
        run.epoch = epoch + 1
        run.history.append(row)
        if evaluated and not last:  # the last evaluation is reported with the test metrics by finish()
            run.save_and_report(row)
        epochs.set_postfix({k.split("/")[1]: f"{v:.4f}" for k, v in row.items() if k in ("train/loss", "val/mAP")})
    return run.finish()


def build_data(config: Config, splits: Splits | None = None) -> RetrievalData:
    """The protocol's datasets for `config` (or for given `splits`), preprocessed as the backbone expects."""
    return build_retrieval_data(
        name=config.data.name,
        root=config.data.root,
        seed=config.data.seed,
        img_size=input_size(config),
        preprocessing=preprocessing(config),
        splits=splits,
        val_per_class=config.data.val_per_class,
        protocol=config.data.protocol,
    )


def input_size(config: Config) -> int:
    """The network's input side in pixels: `model.img_size`, else the backbone's registered size."""
    if config.model.img_size is not None:
        return config.model.img_size
    return timm.models.get_pretrained_cfg(config.model.backbone).input_size[-1]


class _TrainingRun:
    """The mutable state of one run, and the steps `fit` calls on it."""

    def __init__(
        self, config: Config, data: RetrievalData, model: TransHash, runtime: LocalRuntime, run_dir: Path
    ) -> None:
        self.config, self.data, self.runtime, self.run_dir = config, data, runtime, run_dir
        self.model = model.to(runtime.device)
        self.ddp_model = runtime.prepare_model(self.model)  # training only: evaluation has no collective in forward
        self.optimizer = build_optimizer(config, self.model)
        t = config.train
        self.per_worker_batch = max(1, t.batch_size // runtime.world_size)
        self.strategy = STRATEGIES[t.strategy](
            config=config, data=data, runtime=runtime, per_worker_batch=self.per_worker_batch
        )
        loader_args = dict(batch_size=self.per_worker_batch, seed=t.seed, num_workers=config.data.num_workers)
        self.val_loader = sharded_loader(data.val_query, runtime, shuffle=False, **loader_args)
        self.test_loader = sharded_loader(data.test_query, runtime, shuffle=False, **loader_args)
        self.database_loader = sharded_loader(data.database, runtime, shuffle=False, **loader_args)
        steps = self.strategy.steps_per_epoch()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, t.epochs * steps, t.warmup_epochs * steps)
        )
        self.epoch = 0
        self.resumed_at_epoch = 0
        self.history: list[dict[str, float]] = []
        self.best = {"val/mAP": -1.0, "epoch": 0, "model": copy.deepcopy(self.model.state_dict())}
        self.cost = CostMeter(runtime)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        start = time.perf_counter()
        result = self.strategy.train_one_epoch(self.ddp_model, self.optimizer, self.scheduler, epoch)
        self.cost.add_epoch(time.perf_counter() - start, result.images)
        return {"epoch": epoch + 1, **result.metrics, "train/lr": self.scheduler.get_last_lr()[0]}

    def _evaluate(
        self, query_loader: DataLoader, database_codes: torch.Tensor | None = None, timings: list | None = None
    ) -> RetrievalMetrics:
        return evaluate(
            self.model,
            query_loader,
            self.database_loader,
            runtime=self.runtime,
            config=self.config,
            database_codes=database_codes,
            protocol_topk=self.data.topk,
            query_timings=timings,
        )

    def validate(self) -> dict[str, float]:
        if len(self.data.val_query) == 0:  # data.val_per_class=0: no selection, the last epoch's weights are reported
            self.best = {
                "val/mAP": float("nan"),
                "epoch": self.epoch + 1,
                "model": copy.deepcopy(self.model.state_dict()),
            }
            timings: list[float] = []
            encode(self.model, self.test_loader, self.runtime, self.config, timings)
            return self.cost.metrics() | self._code_costs(timings)
        timings = []
        metrics = self._evaluate(self.val_loader, timings=timings)
        if metrics.map > self.best["val/mAP"]:
            self.best = {
                "val/mAP": metrics.map,
                "epoch": self.epoch + 1,
                "model": copy.deepcopy(self.model.state_dict()),
            }
        selected = {SELECTION_METRIC: self.best["val/mAP"]}
        return metrics.as_dict("val") | selected | self.cost.metrics() | self._code_costs(timings)

    def _test_metrics(self, timings: list[float]) -> tuple[RetrievalMetrics, dict[str, float]]:
        """The test queries against the database; for the asymmetric strategy with both kinds of database codes.

        `test/*` follow `eval.database_codes`; asymmetric runs also log `test/mAP_encoder` and
        `test/mAP_learned` (training images in the database retrieved by their learned B, as ADSH does).
        """
        encoded = encode(self.model, self.database_loader, self.runtime, self.config)
        learned = self.strategy.database_codes_for(self.data, encoded)
        if learned is None:
            return self._evaluate(self.test_loader, encoded, timings), {}
        encoder_codes, learned_codes = learned
        by_encoder, by_learned = (
            self._evaluate(self.test_loader, encoder_codes, timings),
            self._evaluate(self.test_loader, learned_codes),
        )
        chosen = by_learned if self.config.eval.database_codes == "learned" else by_encoder
        return chosen, {"test/mAP_encoder": by_encoder.map, "test/mAP_learned": by_learned.map}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "config": to_flat_dict(self.config),
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "strategy": self.strategy.state_dict(),
            "splits": {
                name: torch.from_numpy(np.asarray(getattr(self.data.splits, name))) for name in self.data.splits.sizes()
            },
            "timing": self.cost.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.best = state["epoch"], list(state["history"]), state["best"]
        self.strategy.load_state_dict(state["strategy"])
        self.cost.load_state_dict(state["timing"])

    def save(self) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.state_dict(), self.run_dir / CHECKPOINT_NAME)
            outputs.write_history(self.history, self.run_dir / "history.csv")

    def save_and_report(self, row: dict[str, float]) -> None:
        self.save()
        self.runtime.report(row, self.run_dir if self.runtime.is_main else None)

    def _code_costs(self, timings: list[float]) -> dict[str, float]:
        """What shipping this model costs: code length, bytes per item, parameters, encode time per image (the
        `timings` of the evaluation's query encoding: the validation queries at each evaluation, the test queries
        at the end). Every report carries them, so a multi-objective search finds its objectives in each."""
        bits = self.config.model.bits
        return {
            "code/bits": float(bits),
            "code/bytes": float((bits + 7) // 8),
            "model/params": float(sum(parameter.numel() for parameter in self.model.parameters())),
            "cost/encode_ms": median_ms(timings),
        }

    def finish(self) -> dict[str, float]:
        """Save the last epoch, evaluate the test queries with the best-val weights, write and report.

        The last evaluation and the test metrics go out as one report (with `final: 1`), so a scheduler
        that stops trials at `train.epochs` (ASHA's max_t) still sees the finished result.
        """
        self.save()
        final_weights = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.best["model"])
        timings: list[float] = []
        test, extra = self._test_metrics(timings)
        self.model.load_state_dict(final_weights)
        last = self.history[-1] if self.history else {}
        metrics = {key: value for key, value in last.items() if key.startswith(("train/", "val/"))}
        metrics |= (
            test.as_dict("test")
            | extra
            | {"epoch": self.epoch, "best_epoch": self.best["epoch"], "resumed_at_epoch": self.resumed_at_epoch}
        )
        metrics |= (
            {SELECTION_METRIC: self.best["val/mAP"]} if len(self.data.val_query) else {"selection/last_epoch": 1.0}
        )
        metrics |= self.cost.metrics() | self._code_costs(timings)
        if self.runtime.is_main:
            outputs.write_metrics(metrics, self.run_dir / "metrics.json")
            outputs.write_pr_curve(test, self.run_dir / "pr_curve.csv")
            outputs.plot_pr_curve(
                test,
                self.run_dir / "pr_curve.png",
                title=f"{self.config.model.bits} bits, best val epoch {self.best['epoch']}",
            )
        self.runtime.report(metrics | {"final": 1.0}, self.run_dir if self.runtime.is_main else None)
        return metrics
