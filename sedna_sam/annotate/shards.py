"""Dataset-wide pre-annotation split over many machines: shards of a Kubernetes Indexed Job.

Each image belongs to exactly one of ``count`` shards, chosen by a hash of its name
relative to the input directory (:func:`shard_of`), so the assignment needs no
coordination, never depends on which other images exist (adding images does not move the
finished ones to another shard) and is the same on every machine and Python version.

A shard's run (``sedna-sam annotate --shard-index I --shard-count N``; inside an Indexed
Job the index comes from ``$JOB_COMPLETION_INDEX`` and the count from
``$SEDNA_SAM_SHARD_COUNT``, which the manifest sets to the Job's ``completions``) annotates
the images it owns that have no output yet, and writes its report to
``<out>/.shards/shard-<I>-of-<N>.json``. Outputs may go to a shared directory or to any
fsspec URL (``s3://bucket/ssa_output``): then each image is annotated into a local staging
directory and uploaded, overlay first and SSA JSON last (the JSON's presence means done),
and the input may be a URL too (images are fetched a chunk at a time).

:func:`merge_reports` reads every shard's report and the outputs and says, per image,
done, failed (with the shard's message) or missing (its shard never ran, or stopped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedna_sam.errors import BatchReport, SednaSamError

log = logging.getLogger(__name__)

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job
COUNT_ENV = "SEDNA_SAM_SHARD_COUNT"  # the Job's completions (the manifest passes it)
REPORT_DIR = ".shards"
JSON_SUFFIX = "_semantic.json"
PNG_SUFFIX = "_semantic.png"
FETCH_CHUNK = 64  # images fetched from a URL input per chunk (bounds local disk)


def shard_of(name: str, count: int) -> int:
    """The shard (0..count-1) that owns the image called ``name`` (its path relative to
    the input directory, ``/``-separated): the first 8 bytes of its SHA-256, modulo
    ``count``. Python's ``hash()`` would differ between processes."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``."""

    index: int
    count: int

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    @property
    def report_name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}.json"

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def shard_from(index: int | None, count: int | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard from flags, else from the Indexed Job's env; None when not sharded."""
    raw = os.environ.get(INDEX_ENV, "") if env is None else env.get(INDEX_ENV, "")
    if index is None and raw != "":
        index = _int_from(raw, INDEX_ENV)
    count = shard_count_from(count, env)
    if index is None and count is None:
        return None
    if count is None:
        raise SednaSamError(
            f"shard index {index} without a shard count: pass --shard-count N (or set ${COUNT_ENV} to the "
            "Job's completions)"
        )
    if index is None:
        raise SednaSamError(
            f"--shard-count {count} without a shard index: pass --shard-index (or ${INDEX_ENV})"
        )
    if count < 1 or not 0 <= index < count:
        raise SednaSamError(f"shard index {index} of {count}: need count >= 1 and 0 <= index < count")
    return Shard(index, count)


def shard_count_from(count: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """The shard count from the flag, else ``$SEDNA_SAM_SHARD_COUNT``; None when neither."""
    raw = os.environ.get(COUNT_ENV, "") if env is None else env.get(COUNT_ENV, "")
    if count is None and raw != "":
        count = _int_from(raw, COUNT_ENV)
    return count


def _int_from(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SednaSamError(f"${name}={value!r} is not an integer") from None


# ----------------------------------------------------------------------------- locations


@dataclass
class Location:
    """A directory given as a local path or an fsspec URL (``s3://`` with Sedna's S3 env)."""

    url: str
    fs: Any = field(repr=False)
    root: str

    @classmethod
    def of(cls, url: str | Path) -> Location:
        from sedna_sam.storage import url_filesystem

        fs, root = url_filesystem(str(url))
        return cls(str(url), fs, root.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        from sedna_sam.storage import is_local_filesystem

        return is_local_filesystem(self.fs)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def entries(self) -> list[tuple[str, str]]:
        """(name, type) of what is directly inside: ``file``, ``directory``, or ``other``
        (a broken symlink, a symlink loop, a socket); empty when it does not exist."""
        try:
            found = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        return sorted((e["name"].rstrip("/").rsplit("/", 1)[-1], e.get("type", "")) for e in found)

    def names(self, suffix: str = "") -> list[str]:
        """File names directly inside (ending with ``suffix``)."""
        return [n for n, kind in self.entries() if kind == "file" and n.endswith(suffix)]

    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts), "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def write_json(self, obj: Any, *parts: str) -> None:
        """Atomic on a local directory (temp + rename); one PUT on an object store."""
        data = json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8")
        if self.is_local:
            from sedna_sam.storage import atomic_write_bytes

            atomic_write_bytes(self.path(*parts), data)
        else:
            self.fs.pipe_file(self.path(*parts), data)


def image_names(location: Location) -> list[str]:
    """Image files directly inside ``location`` (the extensions ``annotate`` reads)."""
    from sedna_sam.storage import is_image_file

    return [n for n in location.names() if is_image_file(n)]


def output_stem(name: str) -> str:
    from sedna_sam.storage import image_stem

    return image_stem(name)


def finished_stems(out: Location, save_img: bool) -> set[str]:
    """Stems with an SSA JSON in ``out`` (and an overlay PNG when ``save_img``): one listing,
    not a request per image (the JSON is written last, so its presence means done)."""
    names = set(out.names())
    done = {n[: -len(JSON_SUFFIX)] for n in names if n.endswith(JSON_SUFFIX)}
    if save_img:
        done = {s for s in done if s + PNG_SUFFIX in names}
    return done


# ----------------------------------------------------------------------------- one shard


def run_shard(
    data_url: str | Path,
    out_url: str | Path,
    shard: Shard | None,
    annotate: Callable[[list[Path], Path, Callable[[Path], None] | None], BatchReport],
    *,
    save_img: bool = False,
    overwrite: bool = False,
    staging: str | Path | None = None,
) -> BatchReport:
    """Annotate the images of ``data_url`` that ``shard`` owns (all when None) into
    ``out_url``, skipping finished ones, and write the shard's report there.

    ``annotate(images, out_dir, on_done)`` is the batch annotator
    (:func:`sedna_sam.annotate.batch.annotate_images` with the options bound): called
    on local files and a local output directory; ``on_done(image)`` after each success.
    """
    from sedna_sam.storage import is_image_file

    source, out = Location.of(data_url), Location.of(out_url)
    started = time.time()
    if not source.fs.isdir(source.root):
        raise SednaSamError(f"{data_url}: image directory not found")
    entries = source.entries()
    names = [n for n, kind in entries if kind == "file" and is_image_file(n)]
    # An image name that is not a file (broken symlink, symlink loop) would otherwise
    # vanish from the batch without a word.
    unreadable = [n for n, kind in entries if kind not in ("file", "directory") and is_image_file(n)]
    if not names and not unreadable:
        raise SednaSamError(f"{data_url}: no images (jpg, png, bmp, tif, webp) found")
    owned = [n for n in names if shard is None or shard.owns(n)]
    done_before = set() if overwrite else finished_stems(out, save_img)
    todo = [n for n in owned if output_stem(n) not in done_before]
    log.info(
        "%s: %d of %d images are this shard's, %d already done, %d to do",
        shard or "all shards", len(owned), len(names), len(owned) - len(todo), len(todo),
    )  # fmt: skip
    report = BatchReport("images")
    report.skipped = len(owned) - len(todo)
    for n in unreadable:
        if shard is None or shard.owns(n):
            report.fail(
                source.path(n), "not a readable file (a broken symlink or a symlink loop?): fix or remove it"
            )
    if todo:
        if source.is_local and out.is_local:
            part = annotate([Path(source.path(n)) for n in todo], Path(out.root), None)
            _merge_into(report, part)
        else:
            _annotate_via_staging(source, out, todo, annotate, save_img, report, staging)
    if shard is not None:
        failed = {Path(item).name: message for item, message in report.failed}
        out.write_json(
            {
                "shard": shard.index,
                "count": shard.count,
                "host": socket.gethostname(),
                "started_at": started,
                "finished_at": time.time(),
                "owned": len(owned),
                "done": report.done,
                "skipped": report.skipped,
                "failed": failed,
            },
            REPORT_DIR,
            shard.report_name,
        )
    return report


def _merge_into(report: BatchReport, part: BatchReport) -> None:
    report.done += part.done
    report.skipped += part.skipped
    report.failed.extend(part.failed)
    for key, n in part.notes.items():
        report.count(key, n)


def _annotate_via_staging(
    source: Location,
    out: Location,
    todo: list[str],
    annotate,
    save_img: bool,
    report: BatchReport,
    staging: str | Path | None,
) -> None:
    """Fetch (when the input is remote), annotate into a local staging directory, upload
    each result as it is done: overlay first, JSON last."""
    with tempfile.TemporaryDirectory(prefix="sedna-sam-shard-", dir=staging) as tmp:
        tmp = Path(tmp)
        inputs, outputs = tmp / "in", tmp / "out"
        inputs.mkdir()
        outputs.mkdir()

        def upload(image: Path) -> None:
            stem = output_stem(image.name)
            if save_img:
                out.fs.put_file(str(outputs / (stem + PNG_SUFFIX)), out.path(stem + PNG_SUFFIX))
            out.fs.put_file(str(outputs / (stem + JSON_SUFFIX)), out.path(stem + JSON_SUFFIX))
            for suffix in (PNG_SUFFIX, JSON_SUFFIX):
                (outputs / (stem + suffix)).unlink(missing_ok=True)
            if not source.is_local:
                image.unlink(missing_ok=True)

        chunk = len(todo) if source.is_local else FETCH_CHUNK
        for start in range(0, len(todo), chunk):
            names = todo[start : start + chunk]
            if source.is_local:
                local = [Path(source.path(n)) for n in names]
            else:
                local = []
                for n in names:
                    try:
                        source.fs.get_file(source.path(n), str(inputs / n))
                        local.append(inputs / n)
                    except Exception as exc:  # noqa: BLE001 - fsspec/botocore raise their own types
                        report.fail(source.path(n), f"could not fetch: {type(exc).__name__}: {exc}")
            _merge_into(report, annotate(local, outputs, upload))


# ----------------------------------------------------------------------------- the merge


@dataclass
class MergedReport:
    """Every image of the input, by outcome, across all shards."""

    count: int
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> "shard I: message"
    missing: dict[str, int] = field(default_factory=dict)  # name -> the shard that owns it
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> its report
    unreadable: dict[str, str] = field(default_factory=dict)  # report file -> problem

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.missing or self.unreadable else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "done": len(self.done),
            "failed": self.failed,
            "missing": self.missing,
            "shards_reported": sorted(self.shards),
            "shards_not_reported": [i for i in range(self.count) if i not in self.shards],
            "unreadable_reports": self.unreadable,
        }

    def summary(self, limit: int = 20) -> str:
        total = len(self.done) + len(self.failed) + len(self.missing)
        lines = [
            f"{total} images over {self.count} shards: {len(self.done)} done, {len(self.failed)} failed, "
            f"{len(self.missing)} missing; {len(self.shards)} of {self.count} shards reported"
        ]
        silent = [i for i in range(self.count) if i not in self.shards]
        if silent:
            shown = ", ".join(map(str, silent[:limit])) + (" ..." if len(silent) > limit else "")
            lines.append(f"  shards with no report (never ran, or still running): {shown}")
        for name, message in list(self.failed.items())[:limit]:
            lines.append(f"  FAILED {name}: {message}")
        for name, index in list(self.missing.items())[:limit]:
            lines.append(f"  MISSING {name} (shard {index})")
        hidden = max(0, len(self.failed) - limit) + max(0, len(self.missing) - limit)
        if hidden:
            lines.append(f"  ... and {hidden} more (all of them in the JSON report)")
        for name, problem in self.unreadable.items():
            lines.append(f"  UNREADABLE report {name}: {problem}")
        return "\n".join(lines)


def merge_reports(
    data_url: str | Path, out_url: str | Path, count: int, save_img: bool = False
) -> MergedReport:
    """What is done, failed and missing over all ``count`` shards; written to
    ``<out>/.shards/merged-of-<count>.json`` too."""
    if count < 1:
        raise SednaSamError(f"--shard-count {count}: need at least 1")
    source, out = Location.of(data_url), Location.of(out_url)
    merged = MergedReport(count)
    reports_dir = Location(f"{out.url.rstrip('/')}/{REPORT_DIR}", out.fs, out.path(REPORT_DIR))
    for name in reports_dir.names(".json"):
        if not name.startswith("shard-") or not name.endswith(f"-of-{count:05d}.json"):
            continue
        try:
            body = reports_dir.read_json(name)
            merged.shards[int(body["shard"])] = body
        except (OSError, ValueError, KeyError, TypeError) as exc:
            merged.unreadable[name] = f"{type(exc).__name__}: {exc}"
    done = finished_stems(out, save_img)
    for name in image_names(source):
        if output_stem(name) in done:
            merged.done.append(name)
            continue
        index = shard_of(name, count)
        message = merged.shards.get(index, {}).get("failed", {}).get(name)
        if message is not None:
            merged.failed[name] = f"shard {index}: {message}"
        else:
            merged.missing[name] = index
    out.write_json(merged.to_json(), REPORT_DIR, f"merged-of-{count:05d}.json")
    return merged
