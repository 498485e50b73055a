"""Every kind of file a user may upload: decoded to H x W x 3 uint8 RGB, or refused with one sentence."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from canon.images import MAX_PIXELS, ImageError, load_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width=64, height=48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    return np.concatenate(np.broadcast_arrays(x, y, (x // 2 + y // 2)), axis=2).astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels but carries almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"this is text, not a JPEG", "not an image format"),
    (png_claiming(50_000, 50_000), "megapixels"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1" + b"\x00" * 64, "not an image format"),
])
def test_refused_with_a_sentence(data, message):
    with pytest.raises(ImageError, match=message) as error:
        load_image(data)
    assert str(error.value).count(". ") == 0 and "\n" not in str(error.value)


def test_truncated_jpeg_is_refused():
    data = encode(Image.fromarray(gradient(256, 256)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (15, 400), (400, 20)])
def test_degenerate_sizes_are_refused(size):
    with pytest.raises(ImageError, match="at least 16 pixels"):
        load_image(encode(Image.new("RGB", size), "PNG"))


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError, match="megapixels"):
        load_image(png_claiming(8000, 6000))  # under Pillow's own limit, over ours
    assert 8000 * 6000 > MAX_PIXELS


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK", "1"])
def test_modes_become_rgb(mode):
    rgb = Image.fromarray(gradient())
    image = rgb.convert("L").convert(mode) if mode in ("I;16", "1") else rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    loaded = load_image(encode(image, fmt))
    assert loaded.shape == (48, 64, 3) and loaded.dtype == np.uint8


def test_sixteen_bit_uses_the_full_range():
    values = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    loaded = load_image(encode(Image.fromarray(values), "PNG"))
    assert loaded.max() == 255 and loaded.min() == 0


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert load_image(encode(image, "PNG"))[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert load_image(data)[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied():
    """Orientation 6: the camera stored the picture turned; a phone shows it rotated 90 degrees clockwise."""
    stored = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "PNG", exif=exif)
    loaded = load_image(data)
    assert loaded.shape == (64, 48, 3)
    assert np.array_equal(loaded, np.rot90(stored, -1))


def test_path_errors(tmp_path):
    with pytest.raises(ImageError, match="cannot read missing.png"):
        load_image(tmp_path / "missing.png")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a"]))
def test_fuzz_arbitrary_bytes_decode_or_refuse(data, magic):
    """Bounded fuzzing of the upload entry point: anything is an image or an ImageError, never another exception."""
    try:
        image = load_image(magic + data)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
