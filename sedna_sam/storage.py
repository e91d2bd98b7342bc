"""Files at the edges: atomic writes, the dataset layout, image listing, fsspec URLs.

Every write goes to a temporary file in the destination directory and is renamed into
place, so a killed process leaves either the old file or the new one, never half of one;
reruns can then trust any file that exists.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    The file gets ``mode``, or the permissions a plain ``open()`` would give (0666 less the
    umask): mkstemp's private 0600 would hide datasets from Label Studio or other users.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS and not Path(path).name.startswith(".")


def list_images(directory: str | Path) -> list[Path]:
    """Image files directly inside ``directory`` (any case of the known extensions), sorted."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file() and is_image_file(p))


def image_stem(path: str | Path) -> str:
    """File name without the image extension; keeps inner dots, dashes, spaces, unicode."""
    return Path(path).stem


@dataclass(frozen=True)
class DatasetLayout:
    """The dataset layout (docs/architecture.md section 3)::

    root/raw_data/<stem>.<ext>              input images
    root/ssa_output/<stem>_semantic.json    SSA pre-annotation (+ _semantic.png overlay)
    root/ls_data/<stem>_semantic_poly_ls.json  Label Studio task
    root/train_ids/<stem>_TrainIds.png      uint16 labels, 255 = ignore
    """

    root: Path

    @property
    def raw_data(self) -> Path:
        return self.root / "raw_data"

    @property
    def ssa_output(self) -> Path:
        return self.root / "ssa_output"

    @property
    def ls_data(self) -> Path:
        return self.root / "ls_data"

    @property
    def train_ids(self) -> Path:
        return self.root / "train_ids"

    def ssa_json(self, stem: str) -> Path:
        return self.ssa_output / f"{stem}_semantic.json"

    def ls_task(self, stem: str) -> Path:
        return self.ls_data / f"{stem}_semantic_poly_ls.json"

    def trainids(self, stem: str) -> Path:
        return self.train_ids / f"{stem}_TrainIds.png"

    def trainids_preview(self, stem: str) -> Path:
        return self.train_ids / f"{stem}_TrainIds_color.png"

    def find_image(self, stem: str) -> Path | None:
        """The raw image with this stem, whatever its extension."""
        if not self.raw_data.is_dir():
            return None
        for ext in sorted(IMAGE_EXTENSIONS):
            for candidate in (self.raw_data / f"{stem}{ext}", self.raw_data / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
        for p in self.raw_data.iterdir():  # mixed case such as .Jpg
            if p.stem == stem and is_image_file(p):
                return p
        return None


def is_local_url(url: str) -> bool:
    """A plain path or a ``file://`` URL (not an object store or HTTP)."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The path of a plain path or ``file://`` URL."""
    return url[len("file://") :] if url.startswith("file://") else url


def is_local_filesystem(fs) -> bool:
    """An fsspec filesystem on this machine's disk (where symlinks and renames are ours)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def url_filesystem(url: str):
    """(fsspec filesystem, path) for a URL or a local path.

    ``s3://`` URLs use S3_ENDPOINT_URL / ACCESS_KEY_ID / SECRET_ACCESS_KEY, the names
    Sedna gives its workers (a MinIO or any S3-compatible store).
    """
    import fsspec

    if is_local_url(url):
        return fsspec.filesystem("file"), os.path.abspath(local_path(url))
    protocol, _, rest = url.partition("://")
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        protocol = "s3"
        endpoint = os.environ.get("S3_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        key, secret = os.environ.get("ACCESS_KEY_ID"), os.environ.get("SECRET_ACCESS_KEY")
        if key and secret:
            options["key"], options["secret"] = key, secret
    return fsspec.filesystem(protocol, **options), rest
