"""Fake trial functions for `HASHTUNE_TEST_TRIAL` (see `hashtune.sweep.trial`): known arm means, no training."""

import json
import os

import numpy as np


def noisy_arms(variant: str, flat: dict) -> dict[str, float]:
    """test/mAP ~ N(mean, sd) of the variant's `FAKE_ARMS` entry, fixed per (variant, seed); logs the execution."""
    mean, sd = json.loads(os.environ["FAKE_ARMS"])[variant]
    seed = int(flat["train.seed"])
    value = mean + sd * np.random.default_rng([seed, sum(map(ord, variant))]).standard_normal()
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(f"{variant} seed={seed}\n")
    return {"test/mAP": float(value), "val/best_mAP": float(value), "val/mAP": float(value)}
