"""Ship flagged samples from the local buffer to the cloud store, losing none, sending none twice.

Store layout (the contract the cloud's annotation queue reads)::

    <store>/flagged/<node>/<sample_id>.<ext>    the image, uploaded first
    <store>/flagged/<node>/<sample_id>.json     its metadata, uploaded LAST

A sample is complete in the store when its JSON exists and the image matches the JSON's
size and sha256. One sample goes through these steps; a crash between any two is
repaired on the next run:

1. if the store already holds the complete sample (an earlier run crashed after step 3),
   or the local ledger says it was shipped, skip to step 4;
2. upload the image, read it back, compare size + sha256 (retry the sample otherwise);
3. upload the JSON (atomically on a local store), then append the id to the ledger
   ``<buffer>/.shipped.jsonl`` (fsynced);
4. delete the local JSON, then the local image (a crash in between leaves an orphan
   image that :meth:`SampleBuffer.clean_orphans` removes).

While the store is unreachable or not writable (network down, a permission or disk-full
error, a store root that is not there), the shipper waits with exponential backoff
(capped) and the samples stay in the buffer. It never creates the store root (a local
store whose volume did not mount is waited for, not invented): only ``flagged/<node>/``
below it. Temporary files an interrupted upload left in ``flagged/<node>/`` are removed
when it starts (and, once old, while it runs).
:class:`sedna_sam.edge.supervisor.SupervisedShipper` runs it beside the frame loop of
``edge run``: a crash is counted and the loop restarted, and a stop (SIGTERM) gets one
last bounded pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sedna_sam.edge.buffer import BufferedSample, SampleBuffer
from sedna_sam.errors import is_connection_error
from sedna_sam.storage import atomic_write_bytes, url_filesystem

log = logging.getLogger(__name__)

LEDGER_NAME = ".shipped.jsonl"


STALE_TMP_S = 300.0  # a temporary upload file older than this is a leftover, not a write in progress


class StoreUnreachable(Exception):
    """The store did not answer or refused a write (network, endpoint down, permissions,
    disk full, root missing): retry later."""


class StoreMissing(StoreUnreachable):
    """A local store's root directory does not exist (not mounted?): waited for by a
    running shipper, reported at once by a one-shot pass."""


@dataclass
class ShipStats:
    shipped: int = 0
    already_there: int = 0
    failed: int = 0
    retries: int = 0
    shipped_ids: list[str] = field(default_factory=list)
    last_store_error: str | None = None
    temporaries_removed: int = 0


def sample_key(store_root: str, node: str, name: str) -> str:
    return f"{store_root.rstrip('/')}/flagged/{node}/{name}"


class Shipper:
    """Uploads every complete sample of ``buffer`` to ``store_url`` (a directory, file://
    or s3:// URL; S3 endpoint and keys from S3_ENDPOINT_URL/ACCESS_KEY_ID/SECRET_ACCESS_KEY)."""

    def __init__(
        self,
        buffer: SampleBuffer,
        store_url: str,
        node: str,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        stale_tmp_s: float = STALE_TMP_S,
    ) -> None:
        self.buffer = buffer
        self.store_url = store_url
        self.node = node
        self.fs, self.root = url_filesystem(store_url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local_store = "file" in protocols
        if "s3" in protocols:
            self.fs = _fail_fast_s3(self.fs)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stale_tmp_s = stale_tmp_s
        self.ledger_path = buffer.root / LEDGER_NAME
        self.stats = ShipStats()
        self._node_dir_ready = False
        self._last_sweep = 0.0

    # --- the store's side ---

    @property
    def node_dir(self) -> str:
        return f"{self.root.rstrip('/')}/flagged/{self.node}"

    def _ensure_node_dir(self) -> None:
        """``<root>/flagged/<node>/``, made if missing; the root itself must exist on a local
        store (:class:`StoreUnreachable` otherwise: a volume that did not mount is waited
        for, never replaced by a fresh directory)."""
        if not self.local_store:
            if not self._node_dir_ready:
                self.fs.makedirs(self.node_dir, exist_ok=True)
                self._node_dir_ready = True
            return
        if not os.path.isdir(self.root):
            raise StoreMissing(
                f"{self.store_url}: the store root {self.root} does not exist (a volume that did not "
                "mount?); it is not created here: create or mount it"
            )
        flagged = os.path.join(self.root, "flagged")
        for path in (flagged, self.node_dir):
            try:
                os.mkdir(path)
            except FileExistsError:
                pass

    def clean_temporaries(self, min_age_s: float = 0.0) -> int:
        """Remove temporary upload files (``.<name>.<random>.tmp``) older than ``min_age_s``
        from this node's directory of a local store (an upload killed after writing one);
        returns how many. 0 removes them all: what a (re)starting shipper does."""
        if not self.local_store or not os.path.isdir(self.node_dir):
            return 0
        now, removed = time.time(), 0
        for entry in os.scandir(self.node_dir):
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d temporary file(s) an interrupted upload left in %s", removed, self.node_dir)
        self.stats.temporaries_removed += removed
        return removed

    def _sweep(self) -> None:
        """Start-up and periodic store housekeeping; store errors count as unreachable."""
        try:
            self.clean_temporaries(0.0 if not self._last_sweep else self.stale_tmp_s)
        except OSError as exc:
            raise StoreUnreachable(f"{self.store_url}: {type(exc).__name__}: {exc}") from exc
        self._last_sweep = time.monotonic()

    # --- ledger: ids whose upload completed, until their local files are gone ---

    def _ledger(self) -> set[str]:
        try:
            lines = self.ledger_path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return set()
        out = set()
        for line in lines:
            try:
                out.add(json.loads(line)["sample_id"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: that sample is checked in the store
        return out

    def _ledger_add(self, sample: BufferedSample) -> None:
        line = json.dumps({"sample_id": sample.sample_id, "sha256": sample.meta.get("sha256")}) + "\n"
        with open(self.ledger_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def compact_ledger(self) -> None:
        """Keep only entries whose local files still exist (the others did their job)."""
        with self.buffer.locked():
            present = {s.sample_id for s in self.buffer.samples()}
            keep = sorted(self._ledger() & present)
            atomic_write_bytes(
                self.ledger_path, "".join(json.dumps({"sample_id": i}) + "\n" for i in keep).encode()
            )

    # --- one sample ---

    def _remote_matches(self, path: str, size: int, sha256: str) -> bool:
        try:
            if self.fs.size(path) != size:
                return False
            return hashlib.sha256(self.fs.cat_file(path)).hexdigest() == sha256
        except FileNotFoundError:
            return False

    def _remote_complete(self, sample: BufferedSample, image_key: str, json_key: str) -> bool:
        try:
            remote_meta = json.loads(self.fs.cat_file(json_key))
        except FileNotFoundError:
            return False
        except ValueError:
            return False  # a torn JSON on a store without atomic writes: upload again
        return remote_meta.get("sha256") == sample.meta["sha256"] and self._remote_matches(
            image_key, int(sample.meta["size"]), sample.meta["sha256"]
        )

    def _put(self, path: str, data: bytes) -> None:
        if self.local_store:
            atomic_write_bytes(path, data)  # readers never see half a file
        else:
            self.fs.pipe_file(path, data)  # an S3 PUT is atomic

    def ship_one(self, sample: BufferedSample, ledger: set[str]) -> bool:
        """Ship one sample; True when it is safely in the store and removed locally.

        Raises :class:`StoreUnreachable` when the store cannot be reached or written
        (connection errors, permissions, a full disk, a missing root): retryable.
        """
        image_key = sample_key(self.root, self.node, sample.image_path.name)
        json_key = sample_key(self.root, self.node, sample.json_path.name)
        data = meta_bytes = None
        if sample.sample_id not in ledger:
            try:  # the local side first: its errors are not the store's
                data = sample.image_path.read_bytes()
                meta_bytes = sample.json_path.read_bytes()
            except FileNotFoundError:
                return False  # dropped by the buffer meanwhile
            if hashlib.sha256(data).hexdigest() != sample.meta["sha256"]:
                log.error(
                    "%s: local image does not match its metadata (sha256); kept, not shipped",
                    sample.image_path,
                )
                self.stats.failed += 1
                return False
        try:
            if data is None or self._remote_complete(sample, image_key, json_key):
                self.stats.already_there += 1
                log.info("%s: already in the store; removing the local copy", sample.sample_id)
            else:
                self._ensure_node_dir()
                self._put(image_key, data)
                if not self._remote_matches(image_key, len(data), sample.meta["sha256"]):
                    log.warning("%s: uploaded image does not verify; will retry", image_key)
                    self.stats.failed += 1
                    return False
                self._put(json_key, meta_bytes)  # last: the cloud now sees the sample
                self.stats.shipped += 1
                self.stats.shipped_ids.append(sample.sample_id)
                log.info(
                    "shipped %s (score %.4f, %d bytes) to %s",
                    sample.sample_id,
                    sample.score,
                    len(data),
                    json_key,
                )
        except StoreUnreachable:
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:  # PermissionError, ENOSPC, ... included
            raise StoreUnreachable(f"{self.store_url}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # botocore/aiohttp errors are not OSErrors
            if is_connection_error(exc):
                raise StoreUnreachable(f"{self.store_url}: {type(exc).__name__}: {exc}") from exc
            raise
        self._ledger_add(sample)
        self.buffer.remove(sample)
        return True

    # --- loops ---

    def ship_pending(self, deadline: float | None = None) -> int:
        """One pass over the buffer (until ``deadline``, a ``time.monotonic()`` value, if
        given); returns how many samples left it.

        Raises :class:`StoreUnreachable` at the first store error.
        """
        ledger = self._ledger()
        n = 0
        for sample in self.buffer.samples():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.ship_one(sample, ledger):
                n += 1
        return n

    def final_pass(self, seconds: float) -> bool:
        """One last pass of at most ``seconds`` (shutdown); True when nothing is left.
        Store errors are logged and recorded, never raised."""
        try:
            self.ship_pending(time.monotonic() + seconds)
        except StoreUnreachable as exc:
            self.stats.retries += 1
            self.stats.last_store_error = str(exc)
            log.error("last shipping pass: %s; samples stay buffered", exc)
        left = len(self.buffer.samples())
        if left:
            log.warning("%d flagged sample(s) stay in the buffer %s for the next run", left, self.buffer.root)
        return left == 0

    def run(
        self,
        stop: threading.Event | None = None,
        poll_s: float = 2.0,
        once: bool = False,
        give_up_after_s: float | None = None,
        final_pass_s: float | None = None,
    ) -> ShipStats:
        """Ship until ``stop`` is set (or, with ``once``, until the buffer is empty),
        backing off while the store is unreachable or not writable; ``give_up_after_s``
        ends the retries after that long without reaching the store (the samples stay
        buffered). With ``final_pass_s``, a stop is followed by one last pass of at most
        that many seconds (samples flagged just before a SIGTERM still go out)."""
        stop = stop or threading.Event()
        self.buffer.clean_orphans()
        self.compact_ledger()
        # A hand-written backoff on purpose: a single request's retries (a dropped connection,
        # a throttled PUT) are botocore's, configured in _fail_fast_s3. This loop waits out
        # outages of minutes or days (a store that is down, full, or not mounted) while the
        # samples stay in the durable buffer, and picks up again after a restart; no client
        # retry setting covers that, and letting one retry for that long would block the pass.
        delay = self.backoff_s
        unreachable_since: float | None = None
        self._last_sweep = 0.0  # a (re)start removes every temporary an interrupted upload left
        while not stop.is_set():
            try:
                if not self._last_sweep or time.monotonic() - self._last_sweep >= self.stale_tmp_s:
                    self._sweep()
                self.ship_pending()
                delay, unreachable_since = self.backoff_s, None
                if once and not self.buffer.samples():
                    break
                stop.wait(poll_s)
            except StoreUnreachable as exc:
                self.stats.retries += 1
                self.stats.last_store_error = str(exc)
                if once and isinstance(exc, StoreMissing):
                    log.error("%s; samples stay buffered", exc)  # a one-shot run does not wait for a mount
                    break
                unreachable_since = unreachable_since or time.monotonic()
                if give_up_after_s is not None and time.monotonic() - unreachable_since >= give_up_after_s:
                    log.error(
                        "store unreachable for %.0f s (%s); giving up, samples stay buffered",
                        give_up_after_s,
                        exc,
                    )
                    break
                log.warning(
                    "store unreachable (%s); %d samples stay buffered; retrying in %.1f s",
                    exc,
                    len(self.buffer.samples()),
                    delay,
                )
                if stop.wait(delay):
                    break
                delay = min(delay * 2, self.max_backoff_s)
        if stop.is_set() and final_pass_s is not None:
            self.final_pass(final_pass_s)
        return self.stats


def _fail_fast_s3(fs):
    """The same S3 filesystem, giving up on a dead endpoint in seconds instead of ~20 s of
    s3fs + botocore retries: the shipper's own backoff does the waiting.

    Per-request retries stay with the libraries and are set here, not looped by hand:
    botocore's ``retries`` config (standard mode: connection errors, throttling, 5xx) and
    s3fs's ``retries`` attribute (its own retry of the timeouts and broken connections that
    botocore passes on) each try twice, then the error reaches :meth:`Shipper.ship_one` as
    :class:`StoreUnreachable`."""
    import fsspec

    options = dict(fs.storage_options)
    options.setdefault(
        "config_kwargs",
        {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}},
    )
    fast = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    fast.retries = 2
    return fast


def ship_once(buffer_dir: str | Path, store_url: str, node: str) -> ShipStats:
    """Ship what the buffer holds now, once; raises StoreUnreachable when the store is down
    or not writable (its root missing included)."""
    shipper = Shipper(SampleBuffer(buffer_dir), store_url, node)
    shipper.buffer.clean_orphans()
    shipper.compact_ledger()
    shipper._sweep()
    shipper.ship_pending()
    return shipper.stats
