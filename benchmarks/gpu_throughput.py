"""ViT-B/16 TransHash training throughput at 224 px: fp32 vs bf16 autocast, plain loop vs Ray Train (1 worker).

Run on a GPU machine: `python -m benchmarks.gpu_throughput` (writes results/gpu_throughput.md with
the GPU's name). Rows measured one after the other in one process: the plain loop in fp32, the plain
loop in bf16, and bf16 through Ray Train's TorchTrainer (one worker, one row per `--ray-cpus` value;
its process group is NCCL on a GPU, gloo on the CPU); ratios are to the fp32 row. Random tensors stand
in for CIFAR-10 (10 classes, 3 x 224 x 224 after resizing), so the figure is the model's training speed,
not the JPEG decoder's. `--tiny` runs a 2-block, 32 px model on the CPU (the test suite uses it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset

from benchmarks._table import markdown_table, write_report
from hashtune.config import load_config, parse_overrides, to_flat_dict
from hashtune.train.runtime import LocalRuntime, resolve_device
from hashtune.train.symmetric import SymmetricStrategy
from hashtune.train.trainer import build_model, build_optimizer

VIT_B = [
    "model.backbone=vit_base_patch16_224",
    "model.img_size=224",
    "model.patch_size=16",
    "model.depth=12",
    "model.embed_dim=768",
    "model.num_heads=12",
    "model.bits=64",
    "model.k_groups=4",
]
TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "train.device=cpu",
]


class RandomImages(Dataset):
    """Fixed random images and one-hot labels, in memory; items as the trainer expects them."""

    def __init__(self, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.labels = torch.nn.functional.one_hot(torch.randint(0, classes, (n,), generator=generator), classes).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index


def measure(config, runtime: LocalRuntime, *, images: int, epochs: int) -> float:
    """Training images/s over `epochs` passes after one warm-up pass (all ranks together)."""
    torch.manual_seed(0)
    model = build_model(config, SimpleNamespace(channels=3, num_classes=10)).to(runtime.device)
    train_model = runtime.prepare_model(model)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    data = SimpleNamespace(train=RandomImages(images, config.model.img_size), multi_label=False)
    strategy = SymmetricStrategy(
        config=config, data=data, runtime=runtime, per_worker_batch=config.train.batch_size // runtime.world_size
    )
    strategy.train_one_epoch(train_model, optimizer, scheduler, epoch=0)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    start, seen = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        seen += strategy.train_one_epoch(train_model, optimizer, scheduler, epoch=epoch).images
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def ray_worker(loop_config: dict) -> None:
    import json
    import tempfile

    import ray.train

    from hashtune.config import config_from_dict
    from hashtune.train.distributed import RayTrainRuntime

    rate = measure(
        config_from_dict(loop_config["config"]),
        RayTrainRuntime(),
        images=loop_config["images"],
        epochs=loop_config["epochs"],
    )
    # Train V2 keeps a report's metrics only with a checkpoint
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "rate.json").write_text(json.dumps({"images_per_s": rate}))
        ray.train.report({"images_per_s": rate}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_rate(config, *, images: int, epochs: int, gpus: float, cpus: int = 1) -> float:
    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not find benchmarks/ on their path
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"config": to_flat_dict(config), "images": images, "epochs": epochs},
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=gpus > 0, resources_per_worker={"CPU": cpus} | ({"GPU": gpus} if gpus else {})
        ),
        run_config=RunConfig(name=f"gpu-throughput-{int(time.time())}", storage_path="/tmp/hashtune-bench-ray"),
    )
    return trainer.fit().metrics["images_per_s"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (for tests)")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--ray-cpus", type=int, nargs="+", default=[1], help="CPUs of the Ray Train worker, one row each"
    )
    parser.add_argument("--out", default="results/gpu_throughput.md")
    args = parser.parse_args(argv)
    # TINY replaces some of ViT-B's keys: merged as mappings (a key given twice in one list is refused)
    overrides = (
        parse_overrides(VIT_B) | (parse_overrides(TINY) if args.tiny else {}) | {"train.batch_size": args.batch_size}
    )
    fp32, bf16 = (load_config(overrides=overrides | {"train.precision": precision}) for precision in ("fp32", "bf16"))
    device = resolve_device(bf16.train.device)
    rates = {
        "plain loop, fp32": measure(fp32, LocalRuntime(device), images=args.images, epochs=args.epochs),
        "plain loop, bf16 autocast": measure(bf16, LocalRuntime(device), images=args.images, epochs=args.epochs),
    }
    from hashtune.train.local_ray import init_ray, shutdown_ray

    started = init_ray(num_cpus=None)
    try:
        for cpus in args.ray_cpus:
            rates[f"Ray Train (1 worker, {cpus} CPU), bf16 autocast"] = ray_rate(
                bf16, images=args.images, epochs=args.epochs, cpus=cpus, gpus=1.0 if device.type == "cuda" else 0.0
            )
    finally:
        if started:
            shutdown_ray()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    size = f"{bf16.model.backbone}, {bf16.model.img_size} px, depth {bf16.model.depth}"
    baseline = rates["plain loop, fp32"]
    rows = [
        [name, size, bf16.train.batch_size, path, f"{rate:.0f}", f"{rate / baseline:.3f}"]
        for path, rate in rates.items()
    ]
    command = (
        "python -m benchmarks.gpu_throughput"
        + (" --tiny" if args.tiny else "")
        + f" --ray-cpus {' '.join(map(str, args.ray_cpus))}"
    )
    notes = (
        f"{args.images} random images per epoch, {args.epochs} timed epochs after one warm-up epoch"
        + (f"; CUDA {torch.version.cuda}" if device.type == "cuda" else "")
        + "."
    )
    write_report(
        args.out,
        "TransHash training throughput",
        command,
        markdown_table(["device", "model", "batch", "path", "images/s", "vs fp32 loop"], rows),
        notes,
    )


if __name__ == "__main__":
    main()
