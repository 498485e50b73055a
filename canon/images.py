"""Reading photos safely: any file a user may upload becomes an ``H x W x 3`` uint8 RGB array, or one clear error.

* The pixel count is checked from the header, before decoding, against :data:`MAX_PIXELS` (a decompression bomb is
  refused without allocating its pixels); so are the sides (:data:`MIN_SIDE`, :data:`MAX_ASPECT`).
* The EXIF orientation tag is applied, so the array is upright as a phone shows the photo, and prompts given on the
  displayed picture refer to the same pixels.
* Grayscale, palette, 16-bit, RGBA (composited on white), CMYK and animated images (first frame) are converted to RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # about a 7300 x 5500 photo; larger uploads are refused before decoding
MAX_FILE_BYTES = 50 * 1024 * 1024
# SAM scales the longest side to 1024 px: a thinner image would leave its short side under a few pixels.
MIN_SIDE = 16
MAX_ASPECT = 16


class ImageError(ValueError):
    """An input that is not a usable image; ``str(error)`` is one sentence for the user."""


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a file path, raw bytes or a PIL image into an ``H x W x 3`` uint8 RGB array, upright per EXIF."""
    if isinstance(source, Image.Image):
        return to_rgb_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "the upload"
    else:
        path = Path(source)
        name = path.name
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ImageError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB; use a smaller photo")
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
    if not data:
        raise ImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            return to_rgb_array(image, max_pixels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} declares more than {max_pixels // 1_000_000} megapixels; resize it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image format this app can read (use JPEG, PNG, WebP, GIF, BMP or TIFF)") \
            from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{name} could not be decoded ({str(error)[:120] or type(error).__name__}); "
                         f"the file may be truncated or corrupt") from None


def to_rgb_array(image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """PIL image -> ``H x W x 3`` uint8 RGB array (first frame, EXIF orientation applied, alpha over white)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} pixels, more than the {max_pixels // 1_000_000} megapixels "
                         f"accepted; resize it first")
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"the image is {width}x{height} pixels; a photo needs at least {MIN_SIDE} pixels on each "
                         f"side and sides within {MAX_ASPECT}:1 of each other")
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits rather than clipping.
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size and values.max() > 0 else 1.0
        image = Image.fromarray(np.round(values / peak * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)
