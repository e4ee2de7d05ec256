"""Fake trial functions for `HASHTUNE_TEST_TRIAL` (see `hashtune.sweep.trial`): known arm means, no training."""

import json
import os
import time
from pathlib import Path

import numpy as np


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
