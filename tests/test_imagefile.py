"""Reading user images of every awkward kind, refusing bad ones clearly, writing results."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_batch.util.errors import InputError
from nst_batch.util.imagefile import image_size, read_image, read_metadata, write_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A real 8x8 PNG whose IHDR (with a valid CRC) claims width x height."""
    Image.new("RGB", (8, 8), "red").save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8  # the IHDR chunk follows the 8-byte signature
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    body = bytes(data[ihdr + 4 : ihdr + 8 + 13])
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    return path


def _rgb16_png(path: Path, value: int, size: int = 4) -> Path:
    """A 16-bit-per-channel RGB PNG, which Pillow cannot write itself."""
    row = b"\0" + struct.pack(">H", value) * 3 * size
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(row * size))
        + _chunk(b"IEND", b"")
    )
    return path


def _gradient(width: int = 24, height: int = 16) -> torch.Tensor:
    x = torch.linspace(0, 1, width).expand(height, width)
    y = torch.linspace(0, 1, height).unsqueeze(1).expand(height, width)
    return torch.stack([x, y, (x + y) / 2]).unsqueeze(0)


def test_rgb_png_reads_exact_values_as_1x3xhxw(tmp_path):
    Image.new("RGB", (12, 8), (255, 128, 0)).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (1, 3, 8, 12) and image.dtype == torch.float32
    assert torch.allclose(image[0, :, 3, 5], torch.tensor([1.0, 128 / 255, 0.0]))


def test_exif_orientation_6_turns_the_image_upright(tmp_path):
    picture = Image.new("RGB", (32, 16), "blue")
    picture.paste((255, 0, 0), (0, 0, 8, 16))  # red left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    picture.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)

    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (1, 3, 32, 16)
    assert image_size(tmp_path / "phone.jpg") == (16, 32)
    # Turning clockwise brings the left edge to the top.
    assert image[0, 0, :6].mean() > 0.9 and image[0, 2, :6].mean() < 0.1
    assert image[0, 2, -6:].mean() > 0.9


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I;16")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 8, 8)
    assert torch.allclose(image, torch.full_like(image, 32768 / 65535), atol=1e-4)


def test_16_bit_rgb_png_is_scaled(tmp_path):
    image = read_image(_rgb16_png(tmp_path / "deep-rgb.png", 0x8000))
    assert image.shape == (1, 3, 4, 4)
    assert torch.allclose(image, torch.full_like(image, 0.5), atol=1 / 255)


def test_float_and_int32_greyscale_tiff(tmp_path):
    Image.fromarray(np.full((8, 8), 0.25, dtype=np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 16384, dtype=np.int32)).save(tmp_path / "i.tif")
    assert torch.allclose(read_image(tmp_path / "f.tif"), torch.tensor(0.25))
    assert torch.allclose(read_image(tmp_path / "i.tif"), torch.tensor(16384 / 65535), atol=1e-4)


def test_cmyk_jpeg_becomes_rgb_with_its_colour(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "print.jpg")  # pure red ink
    image = read_image(tmp_path / "print.jpg")
    assert image.shape == (1, 3, 16, 16)
    red, green, blue = image[0].mean(dim=(1, 2)).tolist()
    assert red > 0.9 and green < 0.1 and blue < 0.1


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (0, 0, 0, 0), 1.0),  # fully transparent -> white
        ("RGBA", (0, 0, 0, 255), 0.0),
        ("RGBA", (0, 0, 0, 128), 1 - 128 / 255),
        ("LA", (0, 0), 1.0),
    ],
)
def test_alpha_is_composited_onto_white(tmp_path, mode, colour, expected):
    Image.new(mode, (8, 8), colour).save(tmp_path / "alpha.png")
    image = read_image(tmp_path / "alpha.png")
    assert image.shape == (1, 3, 8, 8)
    assert torch.allclose(image, torch.full_like(image, expected), atol=1e-3)


def test_palette_with_transparent_index_is_white_there(tmp_path):
    picture = Image.new("P", (8, 8), 0)
    picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    picture.paste(1, (0, 0, 4, 8))
    picture.save(tmp_path / "logo.png", transparency=0)
    image = read_image(tmp_path / "logo.png")
    assert image[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert image[0, :, 0, 7].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 51, 0.2), ("1", 1, 1.0), ("1", 0, 0.0)])
def test_greyscale_and_bilevel_become_three_equal_channels(tmp_path, mode, value, expected):
    Image.new(mode, (8, 8), value).save(tmp_path / "grey.png")
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (1, 3, 8, 8)
    assert torch.allclose(image, torch.full_like(image, expected))


def test_format_comes_from_content_not_extension(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "really-a-png.jpg", format="PNG")
    image = read_image(tmp_path / "really-a-png.jpg")
    assert image[0, :, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])


def test_camera_mpo_reads_its_first_picture(tmp_path):
    # Many cameras and phones save JPEGs with a second picture attached (MPO); they are photos.
    frames = [Image.new("RGB", (16, 8), "red"), Image.new("RGB", (16, 8), "blue")]
    frames[0].save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:])
    image = read_image(tmp_path / "camera.jpg")
    assert image.shape == (1, 3, 8, 16)
    assert image[0, 0].mean() > 0.9 and image[0, 2].mean() < 0.1


def _zero_bytes(folder: Path) -> Path:
    (folder / "empty.png").touch()
    return folder / "empty.png"


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_png(folder: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "cut.png")
    return _cut_in_half(folder / "cut.png")


def _truncated_jpeg(folder: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "cut.jpg", quality=95)
    return _cut_in_half(folder / "cut.jpg")


def _text_named_png(folder: Path) -> Path:
    (folder / "notes.png").write_text("these are not pixels\n")
    return folder / "notes.png"


def _animated_gif(folder: Path) -> Path:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    frames[0].save(folder / "spin.gif", save_all=True, append_images=frames[1:], duration=50)
    return folder / "spin.gif"


def _animated_png(folder: Path) -> Path:
    frames = [Image.new("RGB", (8, 8), (index * 80, 0, 0)) for index in range(3)]
    frames[0].save(folder / "spin.png", save_all=True, append_images=frames[1:])
    return folder / "spin.png"


def _multipage_tiff(folder: Path) -> Path:
    pages = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    pages[0].save(folder / "scan.tif", save_all=True, append_images=pages[1:])
    return folder / "scan.tif"


def _over_our_limit(folder: Path) -> Path:
    return _png_claiming_size(folder / "big.png", 9000, 9000)


def _over_pillows_limit(folder: Path) -> Path:
    return _png_claiming_size(folder / "photo.png", 50000, 50000)


def _missing(folder: Path) -> Path:
    return folder / "gone.png"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_zero_bytes, "empty.png is empty"),
        (_truncated_png, "cut.png is truncated or corrupt"),
        (_truncated_jpeg, "cut.jpg is truncated or corrupt"),
        (_text_named_png, "notes.png is not an image Pillow can read: use jpg, png"),
        (_animated_gif, "spin.gif is animated (3 frames): export a single frame"),
        (_animated_png, "spin.png is animated (3 frames)"),
        (_multipage_tiff, "scan.tif has 2 pages: export a single page"),
        (_over_our_limit, "big.png is 9000 x 9000 pixels (81.0 megapixels); the limit is 50.0"),
        (_over_pillows_limit, "photo.png is 2500.0 megapixels; the limit is 50.0 megapixels"),
        (_missing, "gone.png does not exist"),
    ],
)
def test_unusable_files_raise_input_error_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert expected in str(caught.value)


def test_max_pixels_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (20, 10), "white").save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"small.png is 20 x 10 pixels .*\(max_pixels\): downscale"):
        read_image(tmp_path / "small.png", max_pixels=199)
    assert read_image(tmp_path / "small.png", max_pixels=200).shape == (1, 3, 10, 20)


def test_image_size_reads_only_the_header(tmp_path):
    # The pixel data of this file is for 8x8, so decoding it would fail.
    path = _png_claiming_size(tmp_path / "claims.png", 300, 200)
    assert image_size(path) == (300, 200)
    with pytest.raises(InputError, match="claims.png is truncated or corrupt"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_lossless_round_trip_within_one_level(tmp_path, suffix):
    original = _gradient()
    write_image(original, tmp_path / f"out{suffix}")
    again = read_image(tmp_path / f"out{suffix}")
    assert again.shape == original.shape
    assert (again - original).abs().max() <= 0.5 / 255 + 1e-6


def test_jpeg_round_trip_is_close(tmp_path):
    original = _gradient()
    write_image(original[0], tmp_path / "out.jpg")  # (3, H, W) is accepted too
    assert (read_image(tmp_path / "out.jpg") - original).abs().mean() < 0.02


def test_write_clamps_out_of_range_values(tmp_path):
    image = torch.full((1, 3, 4, 4), 2.0)
    image[..., 0, 0] = -1.0
    write_image(image, tmp_path / "clamped.png")
    again = read_image(tmp_path / "clamped.png")
    assert again[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert again[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_metadata_round_trip_with_unicode(tmp_path, suffix):
    metadata = {"style": "Hokusai — 神奈川沖浪裏", "content_weight": "1.0", "seed": "7"}
    write_image(_gradient(), tmp_path / f"out{suffix}", metadata)
    assert read_metadata(tmp_path / f"out{suffix}") == metadata


def test_write_leaves_only_the_result(tmp_path):
    write_image(_gradient(), tmp_path / "out.png", {"a": "b"})
    write_image(_gradient() * 0.5, tmp_path / "out.png")  # overwrite in place
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]
    assert read_metadata(tmp_path / "out.png") == {}


def test_write_refuses_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match=r"out.gif.*\.png, \.jpg"):
        write_image(_gradient(), tmp_path / "out.gif")
    assert list(tmp_path.iterdir()) == []
