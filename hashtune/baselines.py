"""Unsupervised hashing baselines on raw pixels: LSH and ITQ.

* LSH (Charikar 2002): signs of random Gaussian projections of mean-centred features.
* ITQ (Gong & Lazebnik, CVPR 2011): PCA to `bits` dimensions, then 50 alternations of
  B = sign(VR) and the orthogonal Procrustes rotation R that best maps V onto B.
Both are fitted on the training images only and then encode queries and database.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from hashtune.errors import InputError

__all__ = ["LSH", "ITQ"]


def _sign(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 1.0, -1.0)


class LSH:
    """Sign random projections; `fit` only learns the mean."""

    def __init__(self, *, bits: int, seed: int = 0) -> None:
        self.bits, self.seed = bits, seed

    def fit(self, features: np.ndarray) -> LSH:
        self.mean_ = features.mean(axis=0)
        self.projection_ = np.random.default_rng(self.seed).standard_normal((features.shape[1], self.bits))
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        return _sign((features - self.mean_) @ self.projection_)


class ITQ:
    """Iterative quantization: PCA then a learned rotation that minimises the quantization error."""

    def __init__(self, *, bits: int, iterations: int = 50, seed: int = 0) -> None:
        self.bits, self.iterations, self.seed = bits, iterations, seed

    def fit(self, features: np.ndarray) -> ITQ:
        if self.bits > min(features.shape):
            raise InputError(
                f"ITQ with bits={self.bits} needs at least that many features and images, got {features.shape}"
            )
        self.pca_ = PCA(n_components=self.bits, random_state=self.seed).fit(features)
        projected = self.pca_.transform(features)
        rotation, _ = np.linalg.qr(np.random.default_rng(self.seed).standard_normal((self.bits, self.bits)))
        for _ in range(self.iterations):
            codes = _sign(projected @ rotation)
            left, _, right = np.linalg.svd(codes.T @ projected)
            rotation = (left @ right).T
        self.rotation_ = rotation
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        return _sign(self.pca_.transform(features) @ self.rotation_)
