"""Where a model spec points, and models as one file.

Every caller that is handed a model (``--model``, ``MODEL_URLS``, ``BASE_MODEL_URL``, a
Sedna knowledge base) goes through :func:`resolve_model`, which turns the spec into what
``transformers`` loads: a local Segformer directory, or a hub id.

A spec may be:

- a Segformer directory (``save_pretrained`` layout), or a file inside one;
- a one-file model archive (:func:`pack_model`), which is what Sedna's knowledge base
  stores: its client uploads files only, so a model that is a directory would be recorded
  by a path that exists in the train pod alone;
- a Sedna knowledge-base index (``index.pkl``): the model of its seen task (needs the
  kubeedge/sedna lib to unpickle);
- ``file://``, ``s3://`` (S3_ENDPOINT_URL and keys from env, as Sedna gives them) and
  ``http(s)://`` URLs of any of the above, fetched once into the model cache;
- a Hugging Face hub id (``org/name``);
- ``MODEL_URLS`` style lists (``a;b``): the first one.

The archive is an uncompressed tar (weights do not compress) with a manifest
``sedna-sam-model.json`` first, the model directory under ``model/`` and optional extra
members (the knowledge index the model was trained on, the training report). Archives
are unpacked once into the cache, keyed by the archive's content hash, so a worker that
is handed the same model again reuses it and a changed model is never confused with the
old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

MANIFEST_NAME = "sedna-sam-model.json"
MODEL_MEMBER = "model"
ARCHIVE_FORMAT = "sedna-sam-model/1"


# ----------------------------------------------------------------------------- the archive


@dataclass
class ModelArchive:
    """A model archive unpacked in the cache: the Segformer directory and the extras."""

    archive: Path
    model_dir: Path
    manifest: dict
    extras_dir: Path

    def extra(self, name: str) -> Path | None:
        """Path of an extra member (e.g. ``knowledge_index.txt``), None when absent."""
        path = self.extras_dir / name
        return path if path.is_file() else None


def pack_model(model_dir: str | Path, dest: str | Path, extras: dict[str, bytes] | None = None) -> Path:
    """Write ``model_dir`` (and ``extras``: member name -> bytes) as one archive file at
    ``dest``, atomically (temp file beside it, then rename)."""
    model_dir, dest = Path(model_dir), Path(dest)
    if not (model_dir / "config.json").is_file():
        raise SednaSamError(f"{model_dir}: not a model directory (no config.json); nothing to pack")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    extras = dict(extras or {})
    for name in extras:
        if "/" in name or name in (MANIFEST_NAME, MODEL_MEMBER) or name.startswith("."):
            raise ValueError(f"bad extra member name {name!r}")
    manifest = {
        "format": ARCHIVE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_files": [p.relative_to(model_dir).as_posix() for p in files],
        "extras": sorted(extras),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
            for p in files:
                tar.add(p, arcname=f"{MODEL_MEMBER}/{p.relative_to(model_dir).as_posix()}", recursive=False)
            for name, data in sorted(extras.items()):
                _add_bytes(tar, name, data)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def is_model_archive(path: str | Path) -> bool:
    """True for a file whose first tar member is our manifest (cheap: reads one header)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError):
        return False
    return first is not None and first.name == MANIFEST_NAME


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """Where fetched and unpacked models live: $SEDNA_SAM_MODEL_CACHE, else a folder in
    the temp dir (writable in every pod of ours, read-only root file systems included)."""
    root = os.environ.get("SEDNA_SAM_MODEL_CACHE") or os.path.join(tempfile.gettempdir(), "sedna-sam-models")
    return Path(root)


def unpack_model(archive: str | Path) -> ModelArchive:
    """Unpack an archive into the cache (once per content) and return where it is."""
    archive = Path(archive)
    digest = file_sha256(archive)
    target = cache_root() / f"archive-{digest[:24]}"
    if not (target / MANIFEST_NAME).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            with tarfile.open(archive, mode="r:") as tar:
                members = tar.getmembers()
                if not members or members[0].name != MANIFEST_NAME:
                    raise SednaSamError(f"{archive}: not a sedna-sam model archive (no {MANIFEST_NAME})")
                for m in members:
                    if not m.isfile() or m.name.startswith(("/", "..")) or "/../" in f"/{m.name}/":
                        raise SednaSamError(f"{archive}: unsafe or unexpected member {m.name!r}")
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12 / 3.9.17
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)  # members were checked above
            try:
                os.replace(tmp, target)
            except OSError:  # another process unpacked the same content first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise SednaSamError(
            f"{archive}: model archive format {manifest.get('format')!r} is not {ARCHIVE_FORMAT!r}"
        )
    return ModelArchive(archive, target / MODEL_MEMBER, manifest, target)


# ----------------------------------------------------------------------------- resolving


@dataclass
class ResolvedModel:
    """What a model spec resolved to: ``source`` is a local directory or a hub id."""

    spec: str
    source: str
    local: bool
    archive: ModelArchive | None = None
    via: list[str] = field(default_factory=list)  # the hops taken, for logs and errors

    @property
    def path(self) -> Path:
        if not self.local:
            raise SednaSamError(f"{self.spec}: a hub id, not a local model directory")
        return Path(self.source)


def first_url(spec: str) -> str:
    """The first entry of a ``;``/``,`` separated list such as Sedna's MODEL_URLS."""
    parts = [p.strip() for p in str(spec).replace(",", ";").split(";") if p.strip()]
    if not parts:
        raise SednaSamError("no model given: pass --model or set MODEL_URLS")
    return parts[0]


def looks_like_hub_id(spec: str) -> bool:
    """``org/name`` with no path-like start: what transformers would look up on the hub."""
    return (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and "://" not in spec
        and not Path(spec).exists()
    )


def url_file_name(url: str) -> str:
    """The file name a URL stands for; Sedna's KB server serves files as
    ``.../file/download?files=<name>&name=<name>``."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    names = parse_qs(parts.query).get("files")
    return Path(names[0]).name if names else (Path(parts.path).name or "model")


def fetch_remote(url: str) -> Path:
    """A local copy of a remote model file (``s3://`` through fsspec with Sedna's S3 env,
    ``http(s)://`` such as Sedna's knowledge-base server), in the model cache."""
    key = hashlib.sha256(url.encode()).hexdigest()[:24]
    name = url_file_name(url)
    dest = cache_root() / "fetched" / key / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if url.startswith(("http://", "https://")):
            import urllib.error
            import urllib.request

            # Always fetched again: a URL of Sedna's KB server names a file by its base name,
            # which a later upload of the same name replaces.
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
        else:
            from sedna_sam.storage import url_filesystem

            fs, path = url_filesystem(url)
            fs.get(path, str(tmp))
        os.replace(tmp, dest)
    except Exception as exc:  # urllib, fsspec and botocore each raise their own types
        tmp.unlink(missing_ok=True)
        raise SednaSamError(f"{url}: cannot fetch the model ({type(exc).__name__}: {exc})") from None
    log.info("fetched %s -> %s", url, dest)
    return dest


def resolve_model(spec: str | Path, _depth: int = 0) -> ResolvedModel:
    """Resolve a model spec (see the module doc) to a local Segformer directory or hub id.

    Raises :class:`SednaSamError` naming the spec and what was found instead.
    """
    raw = str(spec)
    url = first_url(raw)
    if _depth > 4:
        raise SednaSamError(f"{raw}: model reference chain too long (a knowledge base pointing at itself?)")
    via = [url]
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        local = fetch_remote(url)
        inner = resolve_model(str(local), _depth + 1)
        inner.spec, inner.via = raw, via + inner.via
        return inner
    path = Path(url).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SednaSamError(f"{path}: not a Segformer model directory (no config.json)")
        return ResolvedModel(raw, str(path), True, via=via)
    if path.is_file():
        if path.suffix == ".pkl":
            return _resolve_kb_index(raw, path, via, _depth)
        if is_model_archive(path):
            unpacked = unpack_model(path)
            return ResolvedModel(
                raw, str(unpacked.model_dir), True, unpacked, via + [str(unpacked.model_dir)]
            )
        if (path.parent / "config.json").is_file():  # a file inside a model directory
            return ResolvedModel(raw, str(path.parent), True, via=via)
        raise SednaSamError(
            f"{path}: neither a model directory, a file in one, a sedna-sam model archive nor a Sedna "
            "knowledge-base index"
        )
    if looks_like_hub_id(url):
        return ResolvedModel(raw, url, False, via=via)
    raise SednaSamError(f"{url}: model not found (no such file or directory, and not a hub id like org/name)")


def _resolve_kb_index(raw: str, index: Path, via: list[str], depth: int) -> ResolvedModel:
    """The model a Sedna knowledge-base index names; each place it records is tried in
    turn (the KB server's URL, then the path the train pod wrote it to)."""
    from sedna_sam.sedna_job.kb import model_urls_from_index

    errors = []
    for candidate in model_urls_from_index(index):
        try:
            inner = resolve_model(candidate, depth + 1)
        except SednaSamError as exc:
            errors.append(str(exc))
            continue
        inner.spec, inner.via = raw, via + inner.via
        return inner
    raise SednaSamError(
        f"{index}: none of the models this knowledge-base index names can be loaded:\n  "
        + "\n  ".join(errors)
    )
