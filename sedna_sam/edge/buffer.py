"""The local buffer of flagged samples (``unseen_save_url``), bounded by bytes and count.

On disk, one sample is two files in the buffer directory::

    <sample_id>.<ext>    the frame, as captured (original file bytes or lossless PNG)
    <sample_id>.json     its metadata (see :func:`sample_metadata`), written LAST

so a sample exists exactly when its JSON does; an image without JSON is a write that
was cut off (or a removal that was, see :meth:`SampleBuffer.remove`) and is cleaned up.
When a new sample does not fit, the lowest-scoring samples are dropped (and logged) to
make room, and a sample scoring below everything kept is the one dropped. The worker
adds and the shipper removes, possibly from two processes: every change holds an
exclusive ``flock`` on ``<buffer>/.lock``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedna_sam.storage import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

ORPHAN_AGE_S = 600.0  # an image without JSON older than this is a leftover, not a write in progress


@dataclass(frozen=True)
class BufferedSample:
    sample_id: str
    image_path: Path
    json_path: Path
    meta: dict[str, Any]

    @property
    def score(self) -> float:
        return float(self.meta.get("score", 0.0))

    @property
    def nbytes(self) -> int:
        return int(self.meta.get("size", 0)) + _file_bytes(self.json_path)


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def safe_id_part(text: str, max_len: int = 60) -> str:
    """``text`` reduced to characters safe in file names and object keys on every store."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned[:max_len] or "frame"


def make_sample_id(name: str, data: bytes) -> str:
    """``<name>-<sha256[:12]>``: the same frame flagged twice gets the same id, so a rerun
    overwrites rather than duplicates."""
    return f"{safe_id_part(name)}-{hashlib.sha256(data).hexdigest()[:12]}"


def sample_metadata(
    sample_id: str,
    image_name: str,
    data: bytes,
    *,
    score: float,
    scorer: str,
    threshold: float,
    model_version: str,
    node: str,
    frame_time: float,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata JSON of one flagged sample (the store contract: image file name,
    size, sha256, score, scorer, threshold, model_version, node, frame_time (ISO 8601 UTC))."""
    meta = {
        "sample_id": sample_id,
        "image": image_name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "score": float(score),
        "scorer": scorer,
        "threshold": float(threshold),
        "model_version": model_version,
        "node": node,
        "frame_time": dt.datetime.fromtimestamp(frame_time, dt.timezone.utc).isoformat(),
    }
    meta.update(extra)
    return meta


class SampleBuffer:
    """Flagged samples kept on local disk until shipped, at most ``max_bytes`` and
    ``max_count`` of them."""

    def __init__(self, root: str | Path, max_bytes: int = 2 << 30, max_count: int = 10_000) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.max_count = int(max_count)
        self.dropped = 0

    @contextlib.contextmanager
    def locked(self):
        """Exclusive lock across threads and processes (each call opens its own fd)."""
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def samples(self) -> list[BufferedSample]:
        """Complete samples, highest score first (shipped first when bandwidth is short)."""
        out = []
        for json_path in self.root.glob("*.json"):
            if json_path.name.startswith("."):
                continue
            try:
                meta = json.loads(json_path.read_text("utf-8"))
                image_path = self.root / meta["image"]
            except FileNotFoundError:
                continue  # removed meanwhile
            except (ValueError, KeyError, TypeError) as exc:
                log.error("%s: unreadable sample metadata (%s); left in place", json_path, exc)
                continue
            out.append(BufferedSample(json_path.stem, image_path, json_path, meta))
        out.sort(key=lambda s: (-s.score, s.sample_id))
        return out

    def usage(self) -> tuple[int, int]:
        """(count, bytes) of complete samples."""
        samples = self.samples()
        return len(samples), sum(s.nbytes for s in samples)

    def add(self, image_name_ext: str, data: bytes, meta: dict[str, Any]) -> bool:
        """Keep a sample (image bytes + metadata from :func:`sample_metadata`).

        ``image_name_ext`` is the image's extension (``.png``). Returns False when the
        buffer is full of higher-scoring samples and this one is dropped instead.
        """
        sample_id = meta["sample_id"]
        image_name = f"{sample_id}{image_name_ext.lower()}"
        meta = {**meta, "image": image_name}
        payload = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        need = len(data) + len(payload)
        with self.locked():
            kept = [s for s in self.samples() if s.sample_id != sample_id]
            count, used = len(kept), sum(s.nbytes for s in kept)
            victims: list[BufferedSample] = []
            for candidate in sorted(kept, key=lambda s: (s.score, s.sample_id)):  # lowest first
                if count + 1 <= self.max_count and used + need <= self.max_bytes:
                    break
                if candidate.score >= meta["score"]:
                    break  # everything left scores at least as high as the newcomer
                victims.append(candidate)
                count, used = count - 1, used - candidate.nbytes
            if count + 1 > self.max_count or used + need > self.max_bytes:
                self.dropped += 1
                log.warning(
                    "buffer full (%d samples, %d bytes): dropped new sample %s (score %.4f), "
                    "all kept ones score higher",
                    count,
                    used,
                    sample_id,
                    meta["score"],
                )
                return False
            for victim in victims:
                self.dropped += 1
                log.warning(
                    "buffer full: dropped sample %s (score %.4f) for %s (score %.4f)",
                    victim.sample_id,
                    victim.score,
                    sample_id,
                    meta["score"],
                )
                self._remove_files(victim)
            atomic_write_bytes(self.root / image_name, data)
            atomic_write_json(self.root / f"{sample_id}.json", meta)  # last: the sample now exists
        return True

    def remove(self, sample: BufferedSample) -> None:
        with self.locked():
            self._remove_files(sample)

    def _remove_files(self, sample: BufferedSample) -> None:
        # JSON first: a crash in between leaves an orphan image, never a sample without image.
        for path in (sample.json_path, sample.image_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def clean_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> int:
        """Delete images with no JSON older than ``min_age_s`` (cut-off writes/removals)."""
        removed = 0
        with self.locked():
            referenced = {s.image_path.name for s in self.samples()}
            now = time.time()
            for path in self.root.iterdir():
                if path.name.startswith(".") or path.suffix == ".json" or not path.is_file():
                    continue
                if path.name in referenced or now - path.stat().st_mtime < min_age_s:
                    continue
                log.info("removing %s: image without metadata (an interrupted write or removal)", path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                removed += 1
        return removed
