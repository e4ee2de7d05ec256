"""Test hooks of a sweep (`hashtune.sweep.driver.SweepHooks`, given by `sweep_with_hooks.py`): trial functions with
known arm means instead of training, and a fault injector."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
from ray.tune import Callback


def noisy_arms(variant: str, flat: dict) -> dict[str, float]:
    """test/mAP ~ N(mean, sd) of the variant's `FAKE_ARMS` entry, fixed per (variant, seed); logs the execution."""
    mean, sd = json.loads(os.environ["FAKE_ARMS"])[variant]
    seed = int(flat["train.seed"])
    value = mean + sd * np.random.default_rng([seed, sum(map(ord, variant))]).standard_normal()
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(f"{variant} seed={seed}\n")
    return {"test/mAP": float(value), "val/best_mAP": float(value), "val/mAP": float(value)}


def gated(variant: str, flat: dict) -> dict[str, float]:
    """A value from the trial's K; every trial but K=1's first waits until the file `FAKE_GATE` exists, so a test
    can act (stop a store) while the sweep is certainly mid-way."""
    k_groups = int(flat["model.k_groups"])
    gate = Path(os.environ["FAKE_GATE"])
    while k_groups > 1 and not gate.exists():
        time.sleep(0.05)
    value = 0.5 + 0.1 * k_groups
    return {"val/best_mAP": value, "val/mAP": value, "test/mAP": value}


class KillDriverAfterRunClosed(Callback):
    """Kills the sweep driver's process group (SIGKILL) right after the first trial's MLflow run closed and before
    Tune saved that the trial ended: the worst moment for exactly-once. Once: Tune saves callbacks with its state, so
    a resumed sweep carries this one too, and the marker file says it has fired."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):  # after hashtune's logger closed the run
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.killpg(os.getpgid(0), signal.SIGKILL)


def trade_off(variant: str, flat: dict) -> dict[str, float]:
    """Known objectives of a code-length / depth trade-off: more bits and depth buy accuracy with diminishing returns,
    depth costs encode time; ties on purpose (two depths share an accuracy at 8 bits)."""
    bits, depth = int(flat["model.bits"]), int(flat["model.depth"])
    accuracy = round(1.0 - 2.0 / bits - (0.0 if bits == 8 else 0.01 / depth), 6)
    return {
        "val/best_mAP": accuracy,
        "val/mAP": accuracy,
        "test/mAP": accuracy - 0.01,
        "code/bits": float(bits),
        "cost/encode_ms": 0.1 * depth,
    }
