"""Reading and writing images, with errors that name the file.

Everything inside the package works on ``uint8`` RGB arrays of shape (H, W, 3); this is
the one place that turns whatever is on disk (grayscale, RGBA, 16-bit, float, palette) into
that.

Every image is measured from its header before it is decoded: one over the pixel cap
(:func:`max_image_pixels`, ``$SEDNA_SAM_MAX_IMAGE_PIXELS``, default 50 MP) is refused with
an :class:`InputError` naming it, so a small file that declares a huge size (a
decompression bomb) never reaches the decoder. :func:`read_image_rgb`,
:func:`decode_image_rgb` and :func:`image_size` all do this.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.storage import atomic_write_bytes

MAX_PIXELS_ENV = "SEDNA_SAM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # a 8192 x 6103 frame; a 2048 x 1024 street scene is 2.1 MP


def max_image_pixels() -> int:
    """The pixel cap: ``$SEDNA_SAM_MAX_IMAGE_PIXELS`` or 50 million."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise SednaSamError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive number of pixels, e.g. 50000000")
    return value


def check_pixels(width: int, height: int, what: str, max_pixels: int | None = None) -> None:
    """Raise :class:`InputError` naming ``what`` unless ``width`` x ``height`` is a positive
    size within the pixel cap."""
    cap = max_pixels or max_image_pixels()
    if width <= 0 or height <= 0:
        raise InputError(f"{what}: image size {width}x{height} is not positive")
    if width * height > cap:
        raise InputError(
            f"{what}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the cap of "
            f"{cap / 1e6:g} MP (set {MAX_PIXELS_ENV} to allow larger images, or downscale it)"
        )


def _tiff_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a classic TIFF's first directory, or None. Pillow cannot open
    some TIFFs OpenCV reads (multi-channel float); their header is read here."""
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return None
    order = "<" if head[:2] == b"II" else ">"
    magic, offset = struct.unpack(order + "HI", head[2:8])
    if magic != 42 or offset + 2 > len(head):
        return None
    (count,) = struct.unpack(order + "H", head[offset : offset + 2])
    size: dict[int, int] = {}
    for i in range(count):
        start = offset + 2 + 12 * i
        if start + 12 > len(head):
            break
        tag, kind, n = struct.unpack(order + "HHI", head[start : start + 8])
        if tag in (256, 257) and n == 1 and kind in (3, 4):
            fmt = "H" if kind == 3 else "I"
            (size[tag],) = struct.unpack(order + fmt, head[start + 8 : start + 8 + struct.calcsize(fmt)])
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def header_size(source: str | Path | bytes, what: str | None = None) -> tuple[int, int]:
    """(width, height) from an image's header (a file path or the file's bytes), without
    decoding its pixels. Raises :class:`InputError` naming ``what`` (default: the path)
    when the header cannot be read."""
    from PIL import Image, UnidentifiedImageError

    what = what or str(source if not isinstance(source, bytes) else "<image bytes>")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)) / 1e6:.1f} megapixels" if declared else "too many pixels"
        raise InputError(
            f"{what}: declares {size}, over the cap of {max_image_pixels() / 1e6:g} MP "
            f"(set {MAX_PIXELS_ENV} to allow larger images, or downscale it)"
        ) from None
    except UnidentifiedImageError:
        pass
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InputError(f"{what}: not a readable image (corrupt header: {exc})") from None
    try:
        if isinstance(source, bytes):
            head = source[:65536]
        else:
            with open(source, "rb") as fh:
                head = fh.read(65536)
    except OSError as exc:
        raise InputError(f"{what}: cannot read ({exc.strerror})") from None
    size = _tiff_size(head)
    if size is None:
        raise InputError(f"{what}: not a readable image (corrupt or unsupported format)")
    return size


def _float_to_uint8(img: np.ndarray, what: str) -> np.ndarray:
    """Float pixels to uint8: 0-1 images (what float TIFFs usually hold) are scaled by 255,
    0-255 images are rounded; anything else is refused rather than clipped to black."""
    if not np.isfinite(img).all():
        raise InputError(f"{what}: float image with NaN or infinite pixels; convert it to 8- or 16-bit")
    lo, hi = float(img.min()), float(img.max())
    if lo >= -0.01 and hi <= 1.05:  # lossy float TIFF codecs overshoot 1.0 a little
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.rint(img).astype(np.uint8)
    raise InputError(
        f"{what}: float image with values {lo:.4g}..{hi:.4g}; expected 0-1 or 0-255 (convert it to 8- or 16-bit)"
    )


def decode_image_rgb(data: bytes, what: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file's bytes as (H, W, 3) uint8 RGB (see :func:`read_image_rgb`);
    ``what`` names it in errors."""
    import cv2

    if not data:
        raise InputError(f"{what}: file is empty")
    width, height = header_size(data, what)
    check_pixels(width, height, what, max_pixels)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{what}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype.kind == "f":
        img = _float_to_uint8(img, what)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f"{what}: unsupported channel count {img.shape[2]}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"{what}: image has no pixels")
    return np.ascontiguousarray(img)


def read_image_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Grayscale is replicated, alpha is dropped, 16-bit is scaled to 8-bit, float images in
    0-1 are scaled by 255. Raises :class:`InputError` naming the file if it is empty,
    corrupt, not an image, or over the pixel cap (checked on the header, before decoding).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image_rgb(data, str(path), max_pixels)


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header; :class:`InputError` naming the
    file when it is unreadable or over the pixel cap."""
    width, height = header_size(path, str(path))
    check_pixels(width, height, str(path), max_pixels)
    return width, height


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8/uint16 map or an (H, W, 3) uint8 RGB image."""
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Atomically write a PNG (uint16 single-channel maps stay 16-bit)."""
    return atomic_write_bytes(path, encode_png(array))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (8- or 16-bit) without any conversion."""
    import cv2

    image_size(path)  # the header first: refuse a label map over the pixel cap before decoding
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: not a readable PNG")
    if img.ndim != 2:
        raise InputError(f"{path}: expected a single-channel label image, got shape {img.shape}")
    return img
