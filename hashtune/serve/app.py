"""The Ray Serve application: one deployment whose replicas each hold a bundle, behind FastAPI routes.

    POST /search   images (multipart files, or JSON {"images": [base64, ...]}) + k or radius
                   -> `hashtune.retrieve --json`'s object (add thumbnails=1 for each neighbour's picture)
    POST /encode   images -> {"bundle", "bits", "codes": [hex, ...]}
    GET  /info     the bundle's run id, metrics, bits, index type and database size
    GET  /healthz  {"status": "ok", "bundle": label}
    GET  /         the page: drop a query image, see its neighbours

Encoding is batched across concurrent requests with `@serve.batch`; each request's images are decoded and
preprocessed before they join a batch, so a bad image fails its own request only. The bundle comes in
through `user_config` (`reconfigure`, Serve's in-place update); a replica serving an alias resolves it every
`poll_s` and loads a new version the same way. Either way the new bundle is fetched and loaded beside the
old, then swapped in one assignment, so requests keep being answered throughout (by the old bundle until
the swap, by the new one after). Every answer names its bundle in the `x-hashtune-bundle` header.
"""

import asyncio
import hmac
import logging
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from hashtune.errors import InputError
from hashtune.serve.inputs import (
    Limits,
    RequestError,
    check_count,
    check_length,
    decode_image,
    images_from_json,
    search_options,
)
from hashtune.serve.service import ServedBundle
from hashtune.serve.source import BundleSource, FetchedBundle

__all__ = ["RetrievalDeployment", "ServiceSettings", "build_application"]

logger = logging.getLogger("ray.serve")
PAGE = files("hashtune.serve").joinpath("page.html").read_text()
ACCEPTED_TYPES = ("multipart/form-data", "application/json")
BUNDLE_HEADER = "x-hashtune-bundle"

api = FastAPI(title="hashtune retrieval", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(InputError)
async def _refuse(request: Request, error: InputError) -> JSONResponse:
    status = error.status if isinstance(error, RequestError) else 400
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": str(error)}, status_code=status, headers=headers)


@dataclass(frozen=True)
class ServiceSettings:
    """What every replica is started with: input limits, batching, and the bearer token (None: no auth)."""

    limits: Limits = Limits()
    max_batch_size: int = 16
    batch_wait_ms: float = 0.0
    token: str | None = None
    poll_s: float = 10.0


@serve.deployment(name="retrieval")
@serve.ingress(api)
class RetrievalDeployment:
    def __init__(self, settings: ServiceSettings) -> None:
        torch.set_num_threads(1)  # one replica per CPU: more threads only contend
        self.settings = settings
        self.bundle: ServedBundle | None = None
        self.fetched: FetchedBundle | None = None
        self.source: BundleSource | None = None
        self._follower: asyncio.Task | None = None
        self._encode_batch.set_max_batch_size(settings.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)

    async def reconfigure(self, config: dict) -> None:
        source = BundleSource(**config)
        await self._load(await asyncio.to_thread(source.resolved))
        if source.alias is not None and self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow_alias())

    async def _load(self, source: BundleSource) -> None:
        fetched = await asyncio.to_thread(source.fetch)
        try:
            bundle = await asyncio.to_thread(ServedBundle.load, fetched.folder, source.label)
        except BaseException:  # a version that does not load leaves no download behind
            fetched.remove()
            raise
        previous, self.bundle, self.fetched, self.source = self.fetched, bundle, fetched, source
        if previous is not None and previous.folder != fetched.folder:
            previous.remove()  # loaded in memory; the thumbnails' memory map outlives the file
        logger.info("serving %s", source.label)

    async def _follow_alias(self) -> None:
        """Every `poll_s`: load the version the alias points to when it moved; a store that does not answer is
        logged and asked again, and the loaded bundle keeps serving."""
        while True:
            await asyncio.sleep(self.settings.poll_s)
            try:
                latest = await asyncio.to_thread(self.source.resolved)
                if latest.version != self.source.version:
                    await self._load(latest)
            except Exception as error:  # a store outage or a bad new version: keep serving
                logger.warning("alias %s: %s; still serving %s", self.source.alias, error, self.source.label)

    @serve.batch
    async def _encode_batch(self, items: list[tuple[ServedBundle, torch.Tensor]]) -> list[np.ndarray]:
        codes: dict[int, np.ndarray] = {}
        for bundle in {id(bundle): bundle for bundle, _ in items}.values():  # two bundles only during a swap
            positions = [i for i, (owner, _) in enumerate(items) if owner is bundle]
            batch = torch.stack([items[i][1] for i in positions])
            encoded = bundle.encode(batch)  # the replica's work itself: a thread hop per batch only added latency
            codes.update(zip(positions, encoded))
        return [codes[i] for i in range(len(items))]

    def _authorize(self, request: Request) -> None:
        if self.settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.settings.token}".encode()):
            raise RequestError("missing or wrong token: send the header 'Authorization: Bearer <token>'", 401)

    async def _read_images(self, request: Request) -> tuple[list[str], list[bytes], dict]:
        """(names, image bytes, other fields) of a multipart or JSON body; its size checked before it is read."""
        limits = self.settings.limits
        check_length(request.headers.get("content-length"), limits)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ACCEPTED_TYPES:
            raise RequestError(
                f"content type {kind or 'none'!r} is not accepted; send multipart/form-data (image files) or "
                'application/json ({"images": [base64, ...]})',
                415,
            )
        body = await request.body()
        if kind == "application/json":
            blobs, fields = images_from_json(body, limits)
            return [f"image {i}" for i in range(1, len(blobs) + 1)], blobs, fields
        try:
            form = await request.form(max_fields=8)  # the file count is checked below, the bytes above
        except HTTPException as error:
            raise RequestError(f"the multipart body is refused: {error.detail}", 400) from None
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        check_count(len(uploads), limits)
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        names = [upload.filename or f"image {i}" for i, upload in enumerate(uploads, start=1)]
        return names, [await upload.read() for upload in uploads], fields

    async def _codes(self, bundle: ServedBundle, names: list[str], blobs: list[bytes]) -> np.ndarray:
        limits = self.settings.limits
        images = [decode_image(blob, name, limits) for name, blob in zip(names, blobs)]
        pixels = bundle.retriever.preprocess(images)
        return np.stack(await asyncio.gather(*(self._encode_batch((bundle, row)) for row in pixels)))

    def _current(self) -> ServedBundle:
        if self.bundle is None:
            raise RequestError("no bundle is loaded yet; retry in a moment", 503)
        return self.bundle

    @api.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        self._authorize(request)
        bundle = self._current()
        names, blobs, fields = await self._read_images(request)
        options = {**request.query_params, **fields}
        k, radius = search_options(options, len(bundle.retriever), bundle.retriever.bits)
        codes = await self._codes(bundle, names, blobs)
        thumbnails = str(options.get("thumbnails", "")).lower() in ("1", "true")
        answer = bundle.answer(names, codes, k=k, radius=radius, thumbnails=thumbnails)
        return JSONResponse(answer, headers={BUNDLE_HEADER: bundle.label})

    @api.post("/encode")
    async def encode(self, request: Request) -> JSONResponse:
        self._authorize(request)
        bundle = self._current()
        names, blobs, _ = await self._read_images(request)
        codes = await self._codes(bundle, names, blobs)
        answer = {
            "bundle": bundle.label,
            "bits": bundle.retriever.bits,
            "codes": [row.tobytes().hex() for row in codes],
        }
        return JSONResponse(answer, headers={BUNDLE_HEADER: bundle.label})

    @api.get("/info")
    async def info(self, request: Request) -> JSONResponse:
        self._authorize(request)
        bundle = self._current()
        return JSONResponse(bundle.info(), headers={BUNDLE_HEADER: bundle.label})

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        label = None if self.bundle is None else self.bundle.label
        return JSONResponse({"status": "ok" if label else "loading", "bundle": label})

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)


def build_application(
    source: BundleSource, settings: ServiceSettings, *, replicas: int = 1, autoscale: tuple[int, int] | None = None
):
    """The bound Serve application: `replicas` fixed, or Serve's autoscaling between `autoscale`'s bounds."""
    scaling = (
        {"autoscaling_config": {"min_replicas": autoscale[0], "max_replicas": autoscale[1]}}
        if autoscale
        else {"num_replicas": replicas}
    )
    # requests past max_ongoing_requests wait in the proxy, out of reach of the batcher: let a batch's worth in
    deployment = RetrievalDeployment.options(
        user_config=source.as_config(),
        max_ongoing_requests=max(64, 4 * settings.max_batch_size),
        # a search takes milliseconds: draining a replica's requests needs seconds, not Serve's default 20
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=5.0,
        **scaling,
    )
    return deployment.bind(settings)
