"""Image files: reading user images into tensors and writing results with their metadata.

Owns every decision about what a user's file means: the format comes from the content (not
the name), EXIF orientation is applied, any colour mode or bit depth becomes RGB in [0, 1],
transparency is composited onto white, and every way a file can be unusable becomes an
``InputError`` that names the file and says what to do. Results are written atomically with
their settings embedded (PNG text chunks, or JSON in the EXIF ImageDescription of JPEG/WebP).
"""

import json
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .atomicio import atomic_path
from .errors import InputError

WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Only these decoders may run: Pillow would otherwise also open EPS (through Ghostscript),
# ICO, PSD and dozens more. GIF is read so that animated GIFs get a clear message; camera
# MPO files come through the JPEG decoder.
_DECODERS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_EXIF_DESCRIPTION = 0x010E
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# What Pillow's decoders raise on damaged data besides OSError.
_CORRUPT_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def read_image(path: Path, max_pixels: int = 50_000_000) -> torch.Tensor:
    """Decode ``path`` into a float32 RGB tensor of shape (1, 3, H, W) with values in [0, 1]."""
    path = Path(path)
    with _open(path, max_pixels) as image:
        _refuse_multiple_frames(path, image)
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError as error:
            raise _too_large(path, max_pixels, str(error)) from None
        except _CORRUPT_ERRORS as error:
            raise _corrupt(path, error) from None
        return _to_tensor(path, upright)


def image_size(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) as ``read_image`` will return it, from the header alone.

    Like ``read_image`` it refuses a file that is not an image or is over ``max_pixels``.
    """
    path = Path(path)
    with _open(path, max_pixels) as image:
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):
            return height, width
        return width, height


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata ``write_image`` stored: PNG text chunks, or the JSON in a JPEG/WebP's EXIF."""
    path = Path(path)
    with _open(path, max_pixels=None) as image:
        try:
            if image.format == "PNG":
                return dict(image.text)
            description = image.getexif().get(_EXIF_DESCRIPTION)
        except _CORRUPT_ERRORS as error:
            raise _corrupt(path, error) from None
    return _parse_description(description)


def write_image(image: torch.Tensor, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Save a (1, 3, H, W) or (3, H, W) tensor in [0, 1] atomically; the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(
            f"cannot write {path.name}: results can be saved as .png, .jpg, .jpeg or .webp"
        )
    picture = Image.fromarray(_to_uint8(image))
    metadata = {str(key): str(value) for key, value in (metadata or {}).items()}
    with atomic_path(path) as temp:
        if suffix == ".png":
            picture.save(temp, format="PNG", pnginfo=_png_info(metadata))
        elif suffix == ".webp":
            picture.save(temp, format="WEBP", lossless=True, exif=_exif_bytes(metadata))
        else:
            picture.save(temp, format="JPEG", quality=95, exif=_exif_bytes(metadata))


@contextmanager
def _open(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open ``path`` lazily (header only), mapping every failure to an InputError."""
    _check_file(path)
    try:
        # Our own max_pixels check below is the limit that counts; Pillow's warning would
        # only repeat it on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_DECODERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _too_large(path, max_pixels, str(error)) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path.name} is not an image Pillow can read: use jpg, png, webp, bmp or tiff"
        ) from None
    except OSError as error:
        if error.errno is not None:
            raise InputError(f"{path.name} cannot be read ({error.strerror})") from None
        raise _corrupt(path, error) from None
    except _CORRUPT_ERRORS as error:
        raise _corrupt(path, error) from None
    with image:
        _check_pixels(path, image, max_pixels)
        yield image


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as error:
        raise InputError(f"{path} cannot be read ({error.strerror or error})") from None
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    if size == 0:
        raise InputError(f"{path.name} is empty (0 bytes): copy it again")


def _check_pixels(path: Path, image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{path.name} is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels);"
            f" the limit is {max_pixels / 1e6:.1f} megapixels (max_pixels): downscale it first"
        )


def _too_large(path: Path, max_pixels: int | None, detail: str) -> InputError:
    """Pillow refused the size before our own check could run: say the same thing ours would."""
    found = re.search(r"\((\d+) pixels\)", detail)
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too large to decode safely"
    pillow_cap = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels is not None and max_pixels <= pillow_cap:
        limit = f"{max_pixels / 1e6:.1f} megapixels (max_pixels)"
    else:
        limit = f"{pillow_cap / 1e6:.1f} megapixels (Pillow's decompression-bomb limit)"
    return InputError(f"{path.name} is {size}; the limit is {limit}: downscale it first")


def _corrupt(path: Path, error: Exception) -> InputError:
    return InputError(f"{path.name} is truncated or corrupt ({error}): re-export it")


def _refuse_multiple_frames(path: Path, image: Image.Image) -> None:
    # MPO is how many cameras save an ordinary JPEG with a preview or depth map attached:
    # its first frame is the photo, so it is read like any JPEG.
    if image.format == "MPO":
        return
    try:
        frames = getattr(image, "n_frames", 1)
    except _CORRUPT_ERRORS as error:
        raise _corrupt(path, error) from None
    if frames <= 1:
        return
    if image.format == "TIFF":
        raise InputError(f"{path.name} has {frames} pages: export a single page as PNG or JPEG")
    raise InputError(f"{path.name} is animated ({frames} frames): export a single frame as PNG or JPEG")


def _orientation(image: Image.Image) -> int:
    # PngImageFile.getexif() decodes the whole file when the eXIf chunk is not in the header.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _CORRUPT_ERRORS + (TypeError,):
        return 1


def _to_tensor(path: Path, image: Image.Image) -> torch.Tensor:
    """Any Pillow mode -> float32 (1, 3, H, W) RGB in [0, 1]."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = _scaled_grey(image)
        return grey.expand(3, -1, -1).unsqueeze(0).contiguous()
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = _as_float(image.convert("RGBA"))
        rgb, alpha = rgba[:3], rgba[3:]
        return (rgb * alpha + (1.0 - alpha)).unsqueeze(0)
    try:
        rgb = image.convert("RGB")
    except ValueError as error:
        raise InputError(
            f"{path.name} uses colour mode {image.mode}, which cannot be converted to RGB"
            f" ({error}): re-export it as RGB"
        ) from None
    return _as_float(rgb).unsqueeze(0)


def _as_float(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().float().div_(255.0)


def _scaled_grey(image: Image.Image) -> torch.Tensor:
    """16-bit, 32-bit integer and float greyscale -> (1, H, W) in [0, 1].

    Converting these to RGB through Pillow clips everything above 255 to white.
    """
    values = torch.from_numpy(np.asarray(image).astype(np.float32)).unsqueeze(0)
    if image.mode in _SIXTEEN_BIT_MODES:
        scale = 65535.0
    else:
        # "I" and "F" carry no declared range: take the usual one (1, 8 or 16 bit) the data fits.
        peak = float(values.max()) if values.numel() else 1.0
        scale = next((limit for limit in (1.0, 255.0, 65535.0) if peak <= limit), peak)
    return values.div_(scale).clamp_(0.0, 1.0)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (1, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    image = image.detach().to("cpu", torch.float32)
    if torch.isnan(image).any():
        raise ValueError("image contains NaN values")
    scaled = image.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return scaled.permute(1, 2, 0).contiguous().numpy()


def _png_info(metadata: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    return info


def _exif_bytes(metadata: Mapping[str, str]) -> bytes:
    exif = Image.Exif()
    if metadata:
        # EXIF text is ASCII: ensure_ascii escapes the rest, and json.loads restores it.
        exif[_EXIF_DESCRIPTION] = json.dumps(dict(metadata), ensure_ascii=True, sort_keys=True)
    return exif.tobytes()


def _parse_description(description: object) -> dict[str, str]:
    """Our JSON object back as a dict; a camera's plain-text description yields {}."""
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    if not isinstance(description, str):
        return {}
    try:
        parsed = json.loads(description)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(key): str(value) for key, value in parsed.items()}
