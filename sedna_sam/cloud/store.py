"""The store the edge ships flagged samples to, as the cloud service reads it.

The shipper writes ``<store>/flagged/<node>/<id>.<ext>`` then ``<id>.json`` (size,
sha256, score, ...), the JSON last (docs/architecture.md section 3). :func:`scan_store`
lists the complete samples; :func:`fetch_sample` checks one (size, checksum, pixel cap,
plain files inside the store) and copies its image into the dataset's raw_data/.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedna_sam.errors import InputError
from sedna_sam.storage import atomic_write_bytes, is_local_filesystem


@dataclass(frozen=True)
class FlaggedSample:
    """One complete sample in the store (its JSON exists, so its image was written)."""

    sample_id: str
    node: str
    json_path: str  # path inside the store's filesystem


def scan_store(fs, root: str) -> list[FlaggedSample]:
    """Complete samples under ``<root>/flagged/<node>/<id>.json``, sorted by path.

    The shipper writes the image first and the JSON last, so a JSON means the sample is
    there; an image without JSON is an upload in progress and is left alone.
    """
    pattern = posixpath.join(root.rstrip("/"), "flagged", "*", "*.json")
    found = []
    for path in sorted(fs.glob(pattern)):
        name = posixpath.basename(path)
        if name.startswith("."):
            continue
        node = posixpath.basename(posixpath.dirname(path))
        found.append(FlaggedSample(sample_id=name[: -len(".json")], node=node, json_path=path))
    return found


MAX_META_BYTES = 1 << 20  # a sample's JSON is a few hundred bytes
MAX_IMAGE_BYTES = 256 << 20  # a frame (the pixel cap, checked on the header, is the finer limit)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_store_file(fs, path: str, root: str | None, limit: int) -> bytes:
    """Bytes of one file of the store, at most ``limit``. On a local store the file must be
    a regular file, not a symlink, and (with ``root``) lie under the store root after
    resolving every symlink of its directories; :class:`InputError` naming it otherwise."""
    if not is_local_filesystem(fs):
        try:
            size = fs.size(path)
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the store") from None
        if size is not None and size > limit:
            raise InputError(f"{path}: {size} bytes, over the {limit} bytes a sample may have")
        return fs.cat_file(path)
    if root is not None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise InputError(f"{path}: resolves to {real}, outside the store {real_root}; refused")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{path}: missing from the store") from None
    except OSError as exc:
        if os.path.islink(path):
            raise InputError(
                f"{path}: is a symbolic link; samples must be plain files in the store"
            ) from None
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise InputError(f"{path}: {info.st_size} bytes, over the {limit} bytes a sample may have")
        return fh.read(limit + 1)


def fetch_sample(fs, json_path: str, raw_data: Path, root: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Read a flagged sample's JSON, check its image (size, sha256, pixel cap) and copy it
    to ``raw_data/<sample id><ext>`` atomically. Returns (local image path, metadata).

    Raises :class:`InputError` naming the file when the JSON is bad (no ``size`` or
    ``sha256``), the image does not match it, is over the pixel cap, or (on a local store)
    is a symlink or lies outside the store ``root``. A copy already in place with the right
    checksum is kept (rerun = no-op).
    """
    import json

    from sedna_sam.images import check_pixels, header_size
    from sedna_sam.storage import IMAGE_EXTENSIONS

    try:
        meta = json.loads(read_store_file(fs, json_path, root, MAX_META_BYTES))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{json_path}: expected a JSON object, got {type(meta).__name__}")
    image_name = meta.get("image") or meta.get("image_file")
    if (
        not isinstance(image_name, str)
        or not image_name
        or len(image_name) > 255
        or any(c in image_name for c in "/\\\x00")
        or image_name.startswith(".")
    ):
        raise InputError(
            f"{json_path}: 'image' must name the image file beside it, got {str(image_name)[:80]!r}"
        )
    ext = posixpath.splitext(image_name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(f"{json_path}: image {image_name!r} is not a known image type")
    size, want_sha = meta.get("size"), meta.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"{json_path}: 'size' (the image's byte count) is missing or not a positive integer")
    if not isinstance(want_sha, str) or not _SHA256.fullmatch(want_sha.lower()):
        raise InputError(f"{json_path}: 'sha256' (the image's checksum) is missing or not 64 hex digits")
    want_sha = want_sha.lower()
    sample_id = posixpath.basename(json_path)[: -len(".json")]
    dest = raw_data / f"{sample_id}{ext}"
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == want_sha:
        return dest, meta
    image_path = posixpath.join(posixpath.dirname(json_path), image_name)
    if size > MAX_IMAGE_BYTES:
        raise InputError(f"{json_path}: says the image has {size} bytes, over {MAX_IMAGE_BYTES}")
    data = read_store_file(fs, image_path, root, MAX_IMAGE_BYTES)
    if size != len(data):
        raise InputError(f"{image_path}: {len(data)} bytes, but {json_path} says {size}")
    if hashlib.sha256(data).hexdigest() != want_sha:
        raise InputError(f"{image_path}: sha256 does not match {json_path} (corrupt or partial upload)")
    check_pixels(*header_size(data, image_path), image_path)  # before it reaches raw_data/ and SAM
    atomic_write_bytes(dest, data)
    return dest, meta
