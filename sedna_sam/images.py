"""Reading and writing images, with errors that name the file.

Everything inside the package works on ``uint8`` RGB arrays of shape (H, W, 3); this is
the one place that turns whatever is on disk (grayscale, RGBA, 16-bit, palette) into that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.storage import atomic_write_bytes


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Grayscale is replicated, alpha is dropped, 16-bit is scaled to 8-bit. Raises
    :class:`InputError` naming the file if it is empty, corrupt or not an image.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path}: file is empty")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f"{path}: unsupported channel count {img.shape[2]}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"{path}: image has no pixels")
    return np.ascontiguousarray(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header when possible."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image size ({exc})") from None


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

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: not a readable PNG")
    if img.ndim != 2:
        raise InputError(f"{path}: expected a single-channel label image, got shape {img.shape}")
    return img
