"""Optuna samplers as a sweep's searcher needs them: picklable, since Tune saves the searcher with its state."""

from __future__ import annotations

import threading

import optuna

__all__ = ["PicklableNSGAIISampler"]


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler; Optuna 5.1's holds a `threading.Lock` (for its generation cache only), which
    pickle refuses: it is left out of the pickled state and made anew when the state is read back."""

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()
