"""What a request to the service may carry, checked before anything is decoded (no Ray, no HTTP server here).

Every refusal is a `RequestError`: an HTTP status and one line naming the bad value and what is accepted.
Sizes are checked in this order, each before the work it guards: the body's declared length (before it is
read), the number of images, each image's bytes, each image's pixel count (from its header, before its
pixels are decoded: a few-KB PNG may claim 30,000 x 30,000).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from hashtune.errors import InputError

__all__ = [
    "Limits",
    "RequestError",
    "check_count",
    "check_length",
    "decode_image",
    "images_from_json",
    "search_options",
]


class RequestError(InputError):
    """A request the service refuses: `status` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return type(self), (str(self), self.status)


@dataclass(frozen=True)
class Limits:
    """The service's input bounds (`--max-bytes`, `--max-pixels`, `--max-images`)."""

    max_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4_000_000
    max_images: int = 16

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")


def check_length(content_length: str | None, limits: Limits) -> int:
    """The body's declared length, refused when absent, malformed, empty or over `max_bytes` (before reading it)."""
    if content_length is None:
        raise RequestError("the request has no Content-Length; send the body with its length (no chunked upload)", 411)
    try:
        length = int(content_length)
    except ValueError:
        raise RequestError(f"Content-Length {content_length[:40]!r} is not a number of bytes", 400) from None
    if length <= 0:
        raise RequestError("the request body is empty; send images as multipart/form-data or JSON", 400)
    if length > limits.max_bytes:
        raise RequestError(f"the request body is {length:,} bytes, over the limit of {limits.max_bytes:,}", 413)
    return length


def check_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise RequestError("the request holds no image; send one or more (multipart files, or JSON 'images')", 400)
    if count > limits.max_images:
        raise RequestError(f"the request holds {count} images, over the limit of {limits.max_images} per request", 413)


def decode_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """An image file's bytes -> the decoded PIL image (`Retriever.encode` reads it as it reads files).

    Its pixel count is checked from the header before any pixel is decoded.
    """
    if not data:
        raise RequestError(f"{name} is empty; send an image file (PNG, JPEG, BMP, GIF, TIFF, WebP)", 400)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > limits.max_pixels:
            raise RequestError(
                f"{name} is {width} x {height} = {width * height:,} pixels, over the limit of "
                f"{limits.max_pixels:,}; refused before decoding (resize it first)",
                413,
            )
        image.load()
        return image
    except Image.DecompressionBombError as error:
        raise RequestError(f"{name} is refused before decoding: {error}", 413) from None
    except UnidentifiedImageError:
        raise RequestError(
            f"{name} is not an image ({len(data):,} bytes); send PNG, JPEG, BMP, GIF, TIFF or WebP", 400
        ) from None
    except OSError as error:  # PIL's "image file is truncated", "broken data stream"
        raise RequestError(f"{name} cannot be decoded (truncated or damaged: {error})", 400) from None


def images_from_json(body: bytes, limits: Limits) -> tuple[list[bytes], dict]:
    """`{"images": [base64, ...], "k": 10}` (or one `"image"`) -> the image bytes and the other fields."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(f'the body is not valid JSON ({error}); send {{"images": [base64, ...]}}', 400) from None
    if not isinstance(document, dict):
        raise RequestError(f'the JSON body is a {type(document).__name__}; send an object {{"images": [...]}}', 400)
    encoded = document.pop("images", None)
    if encoded is None and "image" in document:
        encoded = [document.pop("image")]
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise RequestError("JSON field 'images' must be a list of base64 strings (or 'image': one string)", 400)
    check_count(len(encoded), limits)
    images = []
    for position, item in enumerate(encoded, start=1):
        try:
            images.append(base64.b64decode(item.split(",", 1)[-1] if item.startswith("data:") else item, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(f"JSON image {position} is not valid base64", 400) from None
    return images, document


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RequestError(f"{name} must be an integer, got {value!r}", 422)
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"{name} must be an integer, got {value!r}", 422) from None


def search_options(fields: dict, database_size: int, bits: int) -> tuple[int, int | None]:
    """`k` (default 10, 1..database size) or `radius` (0..bits), from query parameters or JSON fields."""
    if fields.get("k") is not None and fields.get("radius") is not None:
        raise RequestError("give k or radius, not both", 422)
    if fields.get("radius") is not None:
        radius = _integer("radius", fields["radius"])
        if not 0 <= radius <= bits:
            raise RequestError(f"radius must be in [0, {bits}] for {bits}-bit codes, got {radius}", 422)
        return 10, radius
    k = _integer("k", fields.get("k", 10))
    if not 1 <= k <= database_size:
        raise RequestError(f"k must be in [1, {database_size}] (the database size), got {k}", 422)
    return k, None
