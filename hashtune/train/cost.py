"""What a run has spent, across restarts and over every worker: the `cost/*` metrics.

* `cost/cpu_seconds`: process CPU time (all threads) of every worker, summed over ranks;
* `cost/gpu_seconds`: wall time x GPUs held (the run holds its devices while it runs); 0 on CPU;
* `cost/wall_seconds`: the run's wall time (training, evaluation, checkpoints);
* `cost/images_seen`: forward passes over training images, all ranks together (an epoch of either
  strategy forwards 500 digits images, so they compare at equal work);
* `cost/cpu_seconds_main`: the main process's own share, to see what the other workers add.

A checkpoint stores the totals of the last report; after a restore the main rank carries them on and
the others start from zero, so the sums stay the run's totals without a collective at save time.
"""

from __future__ import annotations

import time

from hashtune.train.runtime import LocalRuntime

__all__ = ["CostMeter"]


class CostMeter:
    """Counts a run's cost (see the module docstring); `metrics()` is a collective: every rank calls it."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self.train_seconds, self.images_seen = 0.0, 0
        self._carried = {"cpu": 0.0, "wall": 0.0, "main_cpu": 0.0}
        self._cpu_mark, self._wall_mark = time.process_time(), time.perf_counter()
        self._last_totals = {"cpu": 0.0, "wall": 0.0, "main_cpu": 0.0}

    def add_epoch(self, seconds: float, images: int) -> None:
        self.train_seconds += seconds
        self.images_seen += images

    def _own_cpu(self) -> float:
        return self._carried["cpu"] + time.process_time() - self._cpu_mark

    def metrics(self) -> dict[str, float]:
        """The `cost/*` metrics (summed over ranks) plus throughput and training wall time."""
        cpu = self.runtime.mean(self._own_cpu()) * self.runtime.world_size
        wall = self._carried["wall"] + time.perf_counter() - self._wall_mark
        main_cpu = self._carried["main_cpu"] + (time.process_time() - self._cpu_mark if self.runtime.is_main else 0.0)
        self._last_totals = {"cpu": cpu, "wall": wall, "main_cpu": main_cpu}
        gpus = self.runtime.world_size if self.runtime.device.type == "cuda" else 0
        return {
            "cost/cpu_seconds": cpu,
            "cost/cpu_seconds_main": main_cpu,
            "cost/gpu_seconds": wall * gpus,
            "cost/wall_seconds": wall,
            "cost/images_seen": float(self.images_seen),
            "time/train_s": self.train_seconds,
            "throughput/images_per_s": self.images_seen / self.train_seconds if self.train_seconds else 0.0,
        }

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds, "images_trained": self.images_seen, **self._last_totals}

    def load_state_dict(self, state: dict) -> None:
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_trained"]
        main = self.runtime.is_main
        self._carried = {key: state.get(key, 0.0) if main else 0.0 for key in ("cpu", "wall", "main_cpu")}
        self._cpu_mark, self._wall_mark = time.process_time(), time.perf_counter()
