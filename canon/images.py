"""Reading photos safely: any file a user may upload becomes an ``H x W x 3`` uint8 RGB array, or one clear error.

* The pixel count is checked from the header, before decoding, against :data:`MAX_PIXELS` (a decompression bomb is
  refused without allocating its pixels); so are the sides (:data:`MIN_SIDE`, :data:`MAX_ASPECT`).
* The EXIF orientation tag is applied, so the array is upright as a phone shows the photo, and prompts given on the
  displayed picture refer to the same pixels.
* Grayscale, palette, 16-bit, RGBA (composited on white), CMYK and animated images (first frame) are converted to RGB.
* A file is read only when it is a regular file of at most :data:`MAX_FILE_BYTES`, checked on the open file before
  reading (a named pipe, a device or ``/dev/zero`` is refused at once, never read or waited on);
  :func:`read_upload` also requires that the path is one the caller received as an upload.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Container
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # about a 7300 x 5500 photo; larger uploads are refused before decoding
MAX_FILE_BYTES = 50 * 1024 * 1024
UPLOAD_REFUSAL = "the photo did not arrive as an upload to this app; upload the file itself"
# SAM scales the longest side to 1024 px: a thinner image would leave its short side under a few pixels.
MIN_SIDE = 16
MAX_ASPECT = 16


class ImageError(ValueError):
    """An input that is not a usable image; ``str(error)`` is one sentence for the user."""


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a file path, raw bytes or a PIL image into an ``H x W x 3`` uint8 RGB array, upright per EXIF."""
    return load_photo(source, max_pixels=max_pixels)[0]


def load_photo(source: str | Path | bytes | Image.Image, max_side: int | None = None,
               max_pixels: int = MAX_PIXELS, name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image`, shrunk (Lanczos) so that its longest side is at most ``max_side``; also the size
    ``(H, W)`` of the photo before shrinking, upright. The photo is shrunk before it becomes an array (JPEGs are
    decoded at a reduced scale outright), so a large photo costs little more memory than a small one. ``name``
    is what messages call the photo (default: a path's file name, or "the upload")."""
    if isinstance(source, Image.Image):
        return to_rgb_array(source, max_pixels, max_side)
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), name or "the upload"
    else:
        name = name or Path(source).name
        data = read_regular_file(source, name)
    if not data:
        raise ImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            return to_rgb_array(image, max_pixels, max_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} declares more than {max_pixels // 1_000_000} megapixels; resize it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image format this app can read (use JPEG, PNG, WebP, GIF, BMP or TIFF)") \
            from None
    except Exception as error:  # noqa: BLE001 -- a crafted file can make a decoder raise anything: it is the file's fault
        raise ImageError(f"{name} could not be decoded ({str(error)[:120] or type(error).__name__}); "
                         f"the file may be truncated or corrupt") from None


def read_regular_file(path: str | os.PathLike, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``; raise :class:`ImageError` naming it as ``name`` otherwise.

    The file is opened without blocking and checked on its descriptor (a regular file, at most ``max_bytes``)
    before a byte is read, so a named pipe or a device can neither hang nor flood the caller.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
    too_large = ImageError(f"{name} is larger than {max_bytes // 2**20} MB; use a smaller photo")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{name} is not a regular file")
        if info.st_size > max_bytes:
            raise too_large
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(max_bytes + 1)  # + 1: a file that grew since fstat is caught, not read on
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise too_large
    return data


def read_upload(path, uploads: Container[str], root: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an uploaded file, given the ``path`` a client named for it: only a path in ``uploads`` (the
    files the server received) that lies under ``root`` (its upload folder) with no symbolic link on the way, and
    names a regular file of at most ``max_bytes``. A path that fails the first three gets one :class:`ImageError`,
    the same whatever the reason, so that the message never tells whether some file exists."""
    refusal = ImageError(UPLOAD_REFUSAL)
    if not isinstance(path, str) or not path or "\0" in path or path not in uploads:
        raise refusal
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.path.abspath(root))
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        raise refusal
    if os.path.realpath(absolute) != os.path.join(os.path.realpath(root), relative):  # a link below the root
        raise refusal
    return read_regular_file(absolute, "the photo", max_bytes)


def to_rgb_array(image: Image.Image, max_pixels: int = MAX_PIXELS,
                 max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """PIL image -> ``H x W x 3`` uint8 RGB array (first frame, EXIF orientation applied, alpha over white, longest
    side shrunk to ``max_side``) and the upright size ``(H, W)`` before shrinking."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} pixels, more than the {max_pixels // 1_000_000} megapixels "
                         f"accepted; resize it first")
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"the image is {width}x{height} pixels; a photo needs at least {MIN_SIDE} pixels on each "
                         f"side and sides within {MAX_ASPECT}:1 of each other")
    image.seek(0)
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    # Read before draft(), which changes image.size: EXIF orientations 5 to 8 swap the sides.
    upright = (width, height) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (height, width)
    if scale < 1 and image.format == "JPEG":
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))  # decodes at 1/2, 1/4 or 1/8
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # in place: a 40-megapixel photo is not copied for nothing
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits rather than clipping.
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size and values.max() > 0 else 1.0
        image = Image.fromarray(np.round(values / peak * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if scale < 1:
        size = (max(1, round(upright[1] * scale)), max(1, round(upright[0] * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.array(image, dtype=np.uint8), upright
