"""Servers that benchmarks, scripts and tests start on 127.0.0.1: `mlflow server` / `mlflow ui` over a store and
moto's S3 server, each in its own process group on a free port, stopped (and started again, same port) by hand.

    with mlflow_server("sqlite:///runs.db") as server:   # server.url: http://127.0.0.1:PORT
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence

__all__ = ["LocalServer", "free_port", "mlflow_server", "moto_s3_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A server command (`{port}` in it is this server's port) run in its own process group; `start` returns once
    `url + ready_path` answers HTTP, `stop` sends SIGTERM to the group. A context manager starts and stops it."""

    def __init__(self, name: str, command: Sequence[str], *, ready_path: str = "/", start_timeout_s: float = 120.0):
        self.name, self.port = name, free_port()
        self.command = [part.format(port=self.port) for part in command]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path, self.start_timeout_s = ready_path, start_timeout_s
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalServer:
        self.process = subprocess.Popen(
            self.command,
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start on {self.url} within {self.start_timeout_s:.0f} s")
            time.sleep(0.2)
        return self

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + self.ready_path, timeout=2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def mlflow_server(store_uri: str, *, artifacts: str | None = None, ui: bool = False) -> LocalServer:
    """`mlflow server` (tracking + artifact proxy to `artifacts`) or `mlflow ui` over `store_uri`, one worker."""
    command = [sys.executable, "-m", "mlflow", "ui" if ui else "server", "--backend-store-uri", store_uri]
    if artifacts is not None:
        command += ["--artifacts-destination", artifacts]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    return LocalServer("mlflow ui" if ui else "mlflow server", command, ready_path="/health")


def moto_s3_server() -> LocalServer:
    """moto's S3 (and every other AWS API) server, empty."""
    return LocalServer("moto server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"])
