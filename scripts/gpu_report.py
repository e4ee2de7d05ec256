"""results/gpu.md from what `scripts/gpu_check.sh` left in one or more folders (a later folder wins per file).

python scripts/gpu_report.py OUT_DIR [OUT_DIR ...]   # also copies gpu_throughput.md to results/
"""

import argparse
import json
import shutil
from datetime import date
from pathlib import Path

from benchmarks._table import markdown_table

PATHS = {
    "cpu": "plain loop, CPU ({cores} cores)",
    "gpu": "plain loop, GPU",
    "ray_gpu": "Ray Train, 1 GPU worker (NCCL), 1 CPU",
}
WHEELS = (
    "The machine has torch, timm, numba and scipy but not Ray: Ray 2.60's cp312 wheel without its Java jars, rllib, "
    "serve "
    "and llm, re-packed as tar.xz (30 MB, under the 64 MiB a call may carry), and as wheels what it and its dashboard "
    "need "
    "there (Train V2 needs the dashboard): jsonschema, referencing, rpds-py, pydantic, aiohttp-cors, opencensus, "
    "opentelemetry, google-api-core, protobuf and their needs, all at this checkout's .venv versions, in an ignored "
    "`.whl/`."
)
COLUMNS = [
    "test/mAP",
    "throughput/images_per_s",
    "time/train_s",
    "cost/wall_seconds",
    "cost/cpu_seconds",
    "cost/gpu_seconds",
    "cost/images_seen",
]


def latest(folders: list[Path], name: str) -> Path | None:
    found = [folder / name for folder in folders if (folder / name).exists()]
    return found[-1] if found else None


def throughput_rates(text: str) -> dict[str, float]:
    """path -> images/s from the benchmark's table."""
    cells = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "images/s" not in line]
    return {row[3].strip(): float(row[4]) for row in cells}


def readings(digits: dict[str, dict], rates: dict[str, float]) -> list[str]:
    """What the figures say, each as its ratio."""
    lines = []
    fp32, bf16 = rates.get("plain loop, fp32"), rates.get("plain loop, bf16 autocast")
    if fp32 and bf16:
        lines.append(
            f"bf16 autocast trains ViT-B/16 {bf16 / fp32:.2f}x as fast as fp32 (torch's default fp32 matmuls, no TF32)."
        )
    for path, rate in rates.items():
        if path.startswith("Ray Train") and bf16:
            lines.append(
                f"{path}: {rate / bf16:.2f}x the plain bf16 loop (a worker's torch threads are its CPUs: the "
                "batches are put together on them)."
            )
    if "cpu" in digits and "gpu" in digits:
        cpu, gpu = digits["cpu"], digits["gpu"]
        lines.append(
            f"Digits (8x8 images, a small ViT) gains no speed on the GPU "
            f"({gpu['throughput/images_per_s'] / cpu['throughput/images_per_s']:.2f}x "
            f"the CPU's images/s) but frees the CPU: {gpu['cost/cpu_seconds'] / cpu['cost/cpu_seconds']:.2f}x its "
            "CPU-seconds."
        )
    if len(digits) > 1:
        maps = [metrics["test/mAP"] for metrics in digits.values()]
        lines.append(
            f"The test mAPs ({min(maps):.3f}-{max(maps):.3f}) are one seed per path, whose numerics differ (CPU vs GPU "
            "kernels; the DDP sampler's order): their differences are no finding."
        )
    return lines


def _epochs(digits: dict[str, dict]) -> str:
    """The epochs the digits runs trained, as their metrics say (gpu_check's EPOCHS), e.g. "100" or "50/100"."""
    return "/".join(str(epochs) for epochs in sorted({int(metrics["epoch"]) for metrics in digits.values()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    machine = latest(args.folders, "machine.txt").read_text().splitlines()
    rows, digits = [], {}
    for key, label in PATHS.items():
        metrics_file = latest(args.folders, f"digits_{key}.json")
        if metrics_file is not None:
            metrics = digits[key] = json.loads(metrics_file.read_text())
            rows.append(
                [label.format(cores=machine[2])]
                + [f"{metrics[column]:.3f}" if column == "test/mAP" else f"{metrics[column]:.0f}" for column in COLUMNS]
            )
    throughput = latest(args.folders, "gpu_throughput.md")
    shutil.copyfile(throughput, args.results / "gpu_throughput.md")
    text = (
        f"# The GPU paths, run for real\n\nCommand: `bash scripts/gpu_check.sh` on a lent GPU machine, then "
        f"`python scripts/gpu_report.py OUT_DIR`\n\nDate: {date.today()}; machine: {machine[0]}; {machine[1]}; "
        f"{machine[2]} CPU cores\n\n"
        f"{WHEELS}\n\n## Digits end to end (shipped defaults, 32 bits, {_epochs(digits)} epochs, seed 0)\n\n"
        + markdown_table(["path"] + COLUMNS, rows)
        + "\n## ViT-B/16 training throughput\n\n"
        + throughput.read_text().split("\n\n", 3)[3]
        + "\n## What the figures say\n\n"
        + "".join(f"- {line}\n" for line in readings(digits, throughput_rates(throughput.read_text())))
    )
    (args.results / "gpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
