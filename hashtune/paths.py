"""Where hashtune looks by default: the results folder and the search spaces shipped with the package."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO

from hashtune.errors import TRY_AGAIN_EXIT, HashtuneError, InputError

__all__ = [
    "MAX_NAME",
    "RESULTS_DIR",
    "SPACES_PACKAGE",
    "shipped_spaces",
    "check_name",
    "no_world_write",
    "DiskFullError",
    "atomic_file",
    "atomic_write_text",
    "disk_full",
    "DISK_FULL_EXIT",
    "report_disk_full",
]

DISK_FULL_EXIT = TRY_AGAIN_EXIT
"""The exit code of a command stopped by a full disk (EX_TEMPFAIL: free space and run it again)."""

NAME = re.compile(r"[A-Za-z0-9._-]+")

RESULTS_DIR = Path("results")
"""Default stores (MLflow, Tune, Optuna) and studies, relative to the working directory."""

SPACES_PACKAGE = "hashtune.search_spaces"
"""The project's top-level `search_spaces/` folder, installed as this package (see pyproject.toml)."""


def shipped_spaces() -> dict[str, Traversable]:
    """`{name: YAML resource}` of every shipped space; works from a checkout and from an installed wheel."""
    folder = resources.files(SPACES_PACKAGE)
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


MAX_NAME = 100
"""The longest sweep name: it names folders and files (`<name>.journal`, `<name>.lock`, Tune's trial folders
below it), which a file system limits to 255 bytes."""


def check_name(name: str, what: str) -> str:
    """`name` if it is safe as a folder name (letters, digits, `.`, `_`, `-`; not `.` or `..`; at most
    `MAX_NAME` characters), else ValueError."""
    if not NAME.fullmatch(name or "") or set(name) == {"."}:
        raise InputError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-' (it names folders); e.g. ablations-2"
        )
    if len(name) > MAX_NAME:
        raise InputError(
            f"{what} {name[:20]}... is {len(name)} characters long; at most {MAX_NAME} (it names folders and files)"
        )
    return name


def no_world_write() -> int:
    """Add `o-w` to this process's umask (every command calls it first): stores, checkpoints, bundles and studies
    are then never writable by other users, whatever umask the shell passed on; a stricter one is kept.
    Returns the umask now in force."""
    umask = os.umask(0) | 0o002
    os.umask(umask)
    return umask


class DiskFullError(HashtuneError, OSError):
    """A write that found the disk full; the file it was writing is left as it was before (or absent)."""

    exit_code = TRY_AGAIN_EXIT

    def __init__(self, path: Path, written: int | None = None) -> None:
        folder = path if path.is_dir() else path.parent
        free = shutil.disk_usage(folder).free if folder.is_dir() else 0
        wrote = f"{written:,} bytes written before the disk filled, " if written is not None else ""
        super().__init__(
            errno.ENOSPC,
            f"no space left on device writing {path.name} in {folder} ({wrote}{free:,} bytes free); free space "
            "there and run it again (nothing finished is lost)",
        )
        self.path, self.written = path, written

    def __reduce__(self):  # Ray sends a trial's exception to the driver pickled
        return type(self), (self.path, self.written)

    def __str__(self) -> str:
        return self.strerror


def disk_full(error: BaseException, path: str | Path) -> DiskFullError | None:
    """`error` as a `DiskFullError` naming `path` when it is an ENOSPC (already one: itself), else None."""
    if isinstance(error, DiskFullError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(Path(path))
    return None


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file written in full or not at all: written to a temp file beside `path`, synced, then renamed over it.

    A crash or a full disk leaves `path` as it was (a checkpoint is never read back half-written) and no temp file;
    a full disk raises `DiskFullError` naming the folder, the bytes written and the bytes free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # created as an ordinary file is (0666 less the umask), not mkstemp's 0600
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as error:
        written = temp.stat().st_size if temp.exists() else None
        temp.unlink(missing_ok=True)
        full = disk_full(error, path)
        if full is not None:
            raise (full if isinstance(error, DiskFullError) else DiskFullError(path, written)) from None
        raise


def report_disk_full(prog: str, error: OSError, path: str | Path) -> int:
    """A full disk said in one line on stderr (returns `DISK_FULL_EXIT`); any other `OSError` is raised again."""
    import sys

    full = disk_full(error, path)
    if full is None:
        raise error
    print(f"{prog}: error: {full}", file=sys.stderr)
    return DISK_FULL_EXIT


def atomic_write_text(path: str | Path, text: str) -> None:
    """`path` holds `text`, or what it held before (see `atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(text)
