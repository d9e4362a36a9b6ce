"""read_image and prepare_image on pictures the tests write (refusals: test_hostile_data)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minivgg.data import prepare_image, read_image


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels and whose data is a few bytes."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def png_bytes(size: int = 64, fmt: str = "PNG") -> bytes:
    """A size × size picture of noise, encoded as ``fmt``."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, fmt)
    return buffer.getvalue()


def save(tmp_path, array: np.ndarray, name: str, mode: str | None = None, **kw):
    path = tmp_path / name
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kw)
    return path


def test_rgba_png_gives_three_channels_with_alpha_dropped(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 7
    img = read_image(save(tmp_path, rgba, "a.png"))
    assert img.dtype == np.uint8 and img.shape == (3, 4, 5)
    assert img[:, 2, 3].tolist() == [10, 20, 30] and img.flags.c_contiguous


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_grey_pictures_give_one_channel(tmp_path, mode):
    grey = np.tile(np.array([0, 255], np.uint8), (3, 2))
    img = read_image(save(tmp_path, grey, "g.png", mode))
    assert img.shape == (1, 3, 4) and img[0, 0].tolist() == [0, 255, 0, 255]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    img = read_image(save(tmp_path, values, "g16.png"))
    assert img.shape == (1, 1, 3) and img[0, 0].tolist() == [0, 100, 255]


def test_palette_picture_is_expanded_to_rgb(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    img = read_image(save(tmp_path, rgb, "p.png", "P"))
    assert img.shape == (3, 2, 2) and img[:, 0, 0].tolist() == [255, 0, 0]


def test_target_shrinks_a_large_jpeg_while_decoding_and_keeps_its_shape(tmp_path):
    photo = np.full((1200, 1600, 3), (200, 100, 50), np.uint8)
    path = save(tmp_path, photo, "big.jpg", quality=95)
    assert read_image(path).shape == (3, 1200, 1600)
    small = read_image(path, target=32)
    assert small.shape[0] == 3 and 128 <= min(small.shape[1:]) < 256
    assert small.shape[2] * 3 == small.shape[1] * 4  # still 4:3
    assert np.abs(small.astype(int) - [[[200]], [[100]], [[50]]]).max() <= 3
    with pytest.raises(ValueError, match="max_pixels"):  # without target: too many pixels
        read_image(path, max_pixels=1_000_000)
    assert read_image(path, max_pixels=1_000_000, target=32).shape == small.shape


def test_target_box_reduces_a_large_png(tmp_path):
    path = save(tmp_path, np.zeros((640, 960, 3), np.uint8), "big.png")
    assert read_image(path, target=32).shape == (3, 128, 192)  # 640 // (4 * 32) = 5


def test_prepare_image_converts_colour_and_resizes():
    rgb = np.stack([np.full((10, 20), v, np.uint8) for v in (30, 60, 90)])
    assert prepare_image(rgb, 1, 8).tolist() == np.full((1, 8, 8), 60).tolist()
    grey = np.full((1, 5, 5), 77, np.uint8)
    out = prepare_image(grey, 3, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8 and (out == 77).all()
    same = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.testing.assert_array_equal(prepare_image(same, 3, 4), same)


def test_prepare_image_averages_before_shrinking_so_detail_does_not_vanish():
    """One bright pixel per 4x4 block: bilinear alone samples between them and sees 0."""
    dots = np.zeros((1, 128, 128), np.uint8)
    dots[:, ::4, ::4] = 255
    out = prepare_image(dots, 1, 32)
    assert np.all(out == 16)  # 255 / 16, rounded


def test_prepare_image_names_itself_on_bad_input():
    with pytest.raises(ValueError, match="prepare_image"):
        prepare_image(np.zeros((4, 8, 8), np.uint8), 3, 32)
    with pytest.raises(ValueError, match="prepare_image"):
        prepare_image(np.zeros((3, 8, 8), np.uint8), 2, 32)
