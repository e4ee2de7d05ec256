"""`python -m hashtune.serve`: serve a bundle (or a registered model version) with Ray Serve, until stopped.

    python -m hashtune.serve --bundle bundles/digits32
    python -m hashtune.serve --model hashtune --alias champion [--mlflow-uri URI] [--poll-s 10]
    python -m hashtune.serve --bundle B --host 0.0.0.0 --port 8000 --token-file token.txt --autoscale 1,4

It starts a local Ray on 127.0.0.1 (as the sweep does) or joins `--address`, serves the API and the page
on `--host`:`--port` (127.0.0.1 unless told otherwise; any other host needs `--token-file`), prints one
line when the first answer can be given, and follows `--alias`: when the alias moves to another version,
the replicas load it in place (no request dropped). SIGINT or SIGTERM stops Serve and the Ray it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from hashtune.errors import HashtuneError, InputError
from hashtune.paths import RESULTS_DIR
from hashtune.retrieval.bundle import verify_bundle
from hashtune.serve.inputs import Limits
from hashtune.serve.source import BundleSource, resolve_version

__all__ = ["build_parser", "main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hashtune.serve", description="Serve a retrieval bundle over HTTP.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="a folder written by python -m hashtune.export")
    source.add_argument("--model", help="a registered MLflow model (with --alias or --version)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", help="serve the version this alias points to, and follow it when it moves")
    which.add_argument("--version", help="serve this version of --model")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI of --model (default: sqlite results/mlflow.db)")
    parser.add_argument(
        "--poll-s", type=float, default=10.0, help="seconds between each replica's checks of --alias (default 10)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--token-file", type=Path, help="a file holding the bearer token every request must send")
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, default=1, help="replicas of the deployment (default 1)")
    scaling.add_argument("--autoscale", help="MIN,MAX replicas for Serve's autoscaling")
    parser.add_argument("--max-batch-size", type=int, default=16, help="images encoded together at most (default 16)")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="wait for a batch to fill (default 0: a batch takes what queued while the last one encoded)",
    )
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes, help="largest request body (default 4 MiB)")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="largest image, in pixels")
    parser.add_argument("--max-images", type=int, default=Limits.max_images, help="images per request at most")
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local Ray")
    return parser


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise InputError(f"--{name} must be positive, got {value}")


def _autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--autoscale {text!r} is not MIN,MAX (two integers, e.g. 1,4)") from None
    if not 0 <= low <= high or high < 1:
        raise InputError(f"--autoscale {text!r} needs 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def _token(args) -> str | None:
    if args.token_file is None:
        if args.host not in LOOPBACK:
            raise InputError(
                f"--host {args.host} exposes the service beyond this machine: give --token-file FILE (requests then "
                "need 'Authorization: Bearer <token>'), or keep the default 127.0.0.1"
            )
        return None
    try:
        token = args.token_file.read_text().strip()
    except OSError as error:
        raise InputError(f"--token-file {args.token_file}: cannot read it ({error.strerror})") from None
    if len(token) < 16 or any(character.isspace() for character in token):
        raise InputError(f"--token-file {args.token_file} must hold one token of 16+ characters without spaces")
    return token


def _checked(args):
    """(settings, source, autoscale) from the arguments, every value checked before Ray starts."""
    from hashtune.serve.app import ServiceSettings

    for name in ("port", "replicas", "max_batch_size", "poll_s"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.batch_wait_ms < 0:
        raise InputError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_images=args.max_images)
    settings = ServiceSettings(limits, args.max_batch_size, args.batch_wait_ms, _token(args), args.poll_s)
    autoscale = _autoscale(args.autoscale)
    if args.bundle is not None:
        if args.alias or args.version:
            raise InputError("--alias and --version go with --model, not --bundle")
        verify_bundle(args.bundle)
        return settings, BundleSource(folder=str(args.bundle.absolute())), autoscale
    if not (args.alias or args.version):
        raise InputError(f"--model {args.model} needs --alias NAME or --version N")
    return settings, _registry_source(args), autoscale


def _registry_source(args) -> BundleSource:
    from mlflow import MlflowClient

    from hashtune.tracking import resolve_tracking

    uri, _ = resolve_tracking(args.mlflow_uri, RESULTS_DIR, create=False)
    version = resolve_version(MlflowClient(uri), args.model, alias=args.alias, version=args.version)
    return BundleSource(model=args.model, version=version, alias=args.alias, tracking_uri=uri)


def _wait(stop: threading.Event) -> None:
    while not stop.wait(1.0):
        pass


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, source, autoscale = _checked(args)
    except HashtuneError as error:
        print(f"hashtune.serve: error: {error}", file=sys.stderr)
        return error.exit_code
    from ray import serve

    from hashtune.serve.app import build_application
    from hashtune.train.local_ray import init_ray, shutdown_ray

    started = init_ray(args.address)
    stop = _stop_event()  # after ray.init, which installs its own SIGTERM handler
    try:
        serve.start(http_options={"host": args.host, "port": args.port})

        application = build_application(source, settings, replicas=args.replicas, autoscale=autoscale)
        serve.run(application, name="hashtune", route_prefix="/")
        following = f", following alias {args.alias!r}" if args.alias else ""
        print(
            f"hashtune.serve: serving {source.label}{following} at http://{args.host}:{args.port}/ (Ctrl-C stops)",
            flush=True,
        )
        _wait(stop)
    finally:
        serve.shutdown()
        if started:
            shutdown_ray()
    return 0
