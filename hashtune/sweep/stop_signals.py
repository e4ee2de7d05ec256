"""SIGTERM stops a sweep the way Ctrl-C does, with a watchdog that bounds the graceful stop."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["SIGTERM_GRACE_S", "stop_signals"]

SIGTERM_GRACE_S = 10.0
"""After SIGTERM, how long Tune's graceful stop may take before the driver records the interruption and exits."""


@contextlib.contextmanager
def stop_signals(on_forced_exit) -> Iterator[list[str]]:
    """SIGTERM stops the sweep the way Ctrl-C does (Tune saves its state and returns); yields the signals seen.

    A local Ray's daemons block SIGTERM (`init_ray`), so a SIGTERM to the whole process group reaches the
    driver alone. Should Ray's daemons die anyway (a cluster's, or a signal sent to every process), Tune's
    clean-up would wait for a dead GCS: a watchdog gives the graceful stop `SIGTERM_GRACE_S`, then calls
    `on_forced_exit()` (record the interruption, say how to resume) and leaves with exit 143. Nothing is
    lost: trials are idempotent.
    """
    seen: list[str] = []
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(SIGTERM_GRACE_S):
            on_forced_exit()
            os._exit(128 + signal.SIGTERM)

    def on_signal(signum, frame):
        seen.append(signal.Signals(signum).name)
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop
        threading.Thread(target=watchdog, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield seen
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
