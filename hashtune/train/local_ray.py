"""A local Ray for hashtune's drivers, and the checks before starting one; no torch (a sweep's driver needs none).

`init_ray` connects to a cluster or starts a local Ray whose dashboard listens on 127.0.0.1 (Train V2 needs its
State API), with its daemons blocking SIGTERM; `shutdown_ray` ends a Ray it started. `hashtune.train.distributed`
(Ray Train) and `hashtune.sweep.driver` (Ray Tune) both use them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from hashtune.errors import InputError

__all__ = [
    "LocalRayError",
    "check_local_ray_temp_dir",
    "init_ray",
    "private_ray_temp_dir",
    "shutdown_ray",
    "start_local_ray",
]

# The longest Unix socket a local Ray 2.60 makes under its temp dir: session folder (pid up to 7 digits) + the
# longest dashboard module socket (MetricsHead: the one that failed on CI under pytest-102).
_LONGEST_SOCKET = "/session_2026-01-01_00-00-00_000000_4194304/sockets/dash_MetricsHead"
_MAX_SOCKET_PATH = 107  # Linux AF_UNIX limit (108 bytes with the terminating NUL), as Ray checks it


class LocalRayError(InputError):
    """A local Ray cannot start here (one line, naming the setting to change)."""


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to `address` (default: `RAY_ADDRESS`), or start a local Ray whose dashboard listens on 127.0.0.1 only.

    Train V2 needs the dashboard's State API to clean up placement groups. Returns whether this call
    started Ray (the caller then shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")  # as `ray.init()` honours it (a local start ignores it)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        check_local_ray_temp_dir()
        temp_dir = private_ray_temp_dir()
        with _daemons_block_sigterm():
            start_local_ray(
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                _temp_dir=temp_dir,
            )
    return True


def shutdown_ray() -> None:
    """`ray.shutdown()` for a Ray that `init_ray` started, without Ray's graceful phase for its daemons.

    Ray sends each daemon SIGTERM and waits up to 1 s before SIGKILL; a local Ray's daemons block SIGTERM
    (`_daemons_block_sigterm`), so those waits added about 3 s to every sweep's end for nothing (4.3 s against
    1.4 s for a stock `ray.init()`, measured here 2026-12-02). They get SIGKILL at once, as after the wait.
    """
    import ray

    node = ray._private.worker._global_node
    if node is not None:
        kill_all = node.kill_all_processes
        node.kill_all_processes = lambda **options: kill_all(**(options | {"allow_graceful": False}))
    ray.shutdown()


def check_local_ray_temp_dir() -> None:
    """Refuse a Ray temp dir (RAY_TMPDIR, else TMPDIR, else /tmp) too long for the sockets Ray makes under it.

    Past the limit Ray starts the GCS and raylet but its dashboard dies on the first module socket
    ("Module ... failed to start. Received EOF from pipe"), and Train V2 needs the dashboard.
    """
    from ray._common.utils import get_default_ray_temp_dir

    ray_dir = get_default_ray_temp_dir()
    longest = len((ray_dir + _LONGEST_SOCKET).encode())
    if longest > _MAX_SOCKET_PATH:
        room = _MAX_SOCKET_PATH - len(_LONGEST_SOCKET.encode()) - len("/ray")
        raise LocalRayError(
            f"Ray's temp dir {ray_dir!r} is too long for its Unix sockets ({longest} > {_MAX_SOCKET_PATH} bytes): "
            f"set RAY_TMPDIR to a folder of at most {room} characters, e.g. RAY_TMPDIR=/tmp"
        )


def private_ray_temp_dir(environ: Mapping[str, str] = os.environ, parent: str = "/tmp") -> str | None:
    """Where a local Ray keeps its sessions: Ray's own choice when `RAY_TMPDIR` or `TMPDIR` names a folder, else
    `<parent>/hashtune-ray-<uid>/ray`, inside a folder only this user may enter (0700).

    Ray makes its session folders (sockets, logs, runtime resources) 0777 without the sticky bit, so under a
    shared /tmp/ray any user of the machine could write into them; behind a 0700 parent no one else reaches them.
    """
    if environ.get("RAY_TMPDIR") or environ.get("TMPDIR"):
        return None
    private = Path(parent) / f"hashtune-ray-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        private.mkdir(mode=0o700)
    info = os.lstat(private)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise LocalRayError(
            f"{private} is not a folder of yours (uid {info.st_uid}, mode {stat.filemode(info.st_mode)}): "
            "remove it, or set RAY_TMPDIR to a folder of your own"
        )
    if info.st_mode & 0o077:
        private.chmod(0o700)
    return str(private / "ray")


def start_local_ray(**init_options) -> None:
    """`ray.init(**init_options)` for a new local Ray that shares the machine safely with other local Rays.

    Two things break when another Ray runs on the machine (two sweeps side by side, a notebook beside a sweep, the
    test suite's two workers), and `ray.init` has no option for either:
    * the dashboard agent asks for Ray's fixed port 52365 (`ray start --dashboard-agent-listen-port` can move it):
      the second one retried with backoff, about 4 s more start-up, then ran without its HTTP server. It gets a
      port the OS picks, as Ray's own `cluster_utils` gives every node after the first;
    * Ray's State API, called with no address inside the cluster's own processes, looks for "the" Ray of the
      machine and raises "Found multiple active Ray instances": Train V2's placement-group cleaner died so, a
      finished TorchTrainer's CPUs stayed reserved and the next trial waited for them forever. The GCS gets a
      port chosen here and the daemons start with `RAY_ADDRESS` naming it, so every process of this Ray asks
      its own (the driver's environment is left as it was).
    """
    import ray
    from ray._private import parameter

    gcs_port = _free_port()
    stock = parameter.RayParams

    class _OwnPorts(stock):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", None)  # None: the node asks for port 0
            kwargs.setdefault("gcs_server_port", gcs_port)
            super().__init__(*args, **kwargs)

    previous_address = os.environ.get("RAY_ADDRESS")
    parameter.RayParams = _OwnPorts
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"  # inherited by the daemons, hence by every worker
    try:
        ray.init(address="local", **init_options)  # "local": start one, whatever RAY_ADDRESS says
    finally:
        parameter.RayParams = stock
        if previous_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous_address


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _daemons_block_sigterm() -> Iterator[None]:
    """Start the local Ray's daemons with SIGTERM blocked, as Ray itself starts them with SIGINT blocked.

    They share the driver's process group, so a SIGTERM to the group (a terminal's `kill -TERM -PGID`,
    a scheduler's preemption) would end the raylet too, and the driver's core worker then exits at once
    (status 1, "connection to the plasma store is failed") before the sweep can stop and say how to
    resume. Blocked, the signal reaches the driver alone; the daemons still die with it (Ray's
    PR_SET_PDEATHSIG) and `shutdown_ray()` ends them (SIGKILL, their SIGTERM being blocked). The mask is
    inherited across fork and exec and this thread's own is restored on return.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
