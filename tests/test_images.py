"""Every kind of file a user may upload: decoded to H x W x 3 uint8 RGB, or refused with one sentence."""

import io
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from canon.images import (MAX_PIXELS, UPLOAD_REFUSAL, ImageError, load_image, load_photo, read_regular_file,
                          read_upload)


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


# ------------------------------------------------------------------------------------- reading files, bounded


def test_a_named_pipe_is_refused_at_once_never_waited_on(tmp_path):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    done = threading.Event()
    errors = []

    def read():
        try:
            read_regular_file(pipe, "pipe.jpg")
        except ImageError as error:
            errors.append(str(error))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading a named pipe blocked"  # at once in fact; 10 s only bounds a broken build
    assert errors == ["pipe.jpg is not a regular file"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused_without_reading(device):
    with pytest.raises(ImageError, match="is not a regular file"):
        load_image(device)


def test_a_file_over_the_cap_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(2048)  # sparse: nothing to read, only the size counts
    with pytest.raises(ImageError, match="larger than 0 MB"):
        read_regular_file(big, "big.png", max_bytes=1024)


@pytest.fixture
def upload_root(tmp_path):
    """A stand-in for Gradio's upload folder with one received file, and a file outside it."""
    root = tmp_path / "gradio"
    (root / "abc").mkdir(parents=True)
    received = root / "abc" / "cat.png"
    received.write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    return root, received, outside


def test_read_upload_returns_the_bytes_of_a_received_file(upload_root):
    root, received, _ = upload_root
    assert read_upload(str(received), {str(received)}, root) == received.read_bytes()


def test_read_upload_refuses_every_other_path_with_one_sentence(upload_root, tmp_path):
    root, received, outside = upload_root
    link = root / "abc" / "link.png"
    link.symlink_to(outside)
    linked_folder = root / "linked"
    linked_folder.symlink_to(tmp_path)
    pipe = root / "abc" / "pipe.png"
    os.mkfifo(pipe)
    hostile = [
        str(outside),  # a file the server did not receive
        str(root / "abc" / ".." / ".." / "secret.png"),  # a way out of the folder
        str(link), str(linked_folder / "secret.png"),  # symbolic links out of it, even when "received"
        "/etc/passwd", "/dev/zero", str(root), "", "cat.png\0.png", None, 7, ["x"],
    ]
    uploads = {str(received), *[p for p in hostile if isinstance(p, str)]}  # as if each had been received
    uploads -= {str(outside)}
    for path in hostile:
        with pytest.raises(ImageError) as info:
            read_upload(path, uploads, root)
        assert str(info.value) == UPLOAD_REFUSAL, path
    with pytest.raises(ImageError, match="not a regular file"):  # a received path that is no file: its own reason
        read_upload(str(pipe), {str(pipe)}, root)


def test_load_photo_shrinks_before_it_becomes_an_array_and_reports_the_upright_size():
    image = Image.fromarray(np.tile(gradient(), (20, 20, 1)))  # 1280 x 960
    exif = image.getexif()
    exif[0x0112] = 6  # the camera was turned: shown rotated by 90 degrees clockwise
    for fmt in ("PNG", "JPEG"):
        photo, size = load_photo(encode(image, fmt, exif=exif), max_side=400)
        assert size == (1280, 960) and photo.shape == (400, 300, 3), fmt
        assert load_photo(encode(image, fmt), max_side=2000)[1] == (960, 1280)
    flat = Image.new("RGB", (1000, 500), (10, 200, 30))
    np.testing.assert_array_equal(load_photo(encode(flat, "PNG"), max_side=100)[0],
                                  np.asarray(flat.resize((100, 50), Image.Resampling.LANCZOS)))
