"""Pre-annotation of files and folders: one image file -> SSA files; a folder -> a report.

A folder (:func:`annotate_images`): skips images whose outputs exist and parse, writes
atomically (overlay PNG first, JSON last: the JSON is the "done" mark), reports bad images
and goes on, and with ``world_size`` > 1 shards the images over worker processes (spawned,
one device each; no process group, no NCCL: shards are independent). Each image goes
through :meth:`sedna_sam.annotate.engine.Annotator.annotate`.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.annotate.engine import AnnotateOptions, Annotator
from sedna_sam.errors import BatchReport, SednaSamError

log = logging.getLogger(__name__)

JSON_SUFFIX = "_semantic.json"
PNG_SUFFIX = "_semantic.png"


def output_paths(out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """(``<stem>_semantic.json``, ``<stem>_semantic.png``) in ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / f"{stem}{JSON_SUFFIX}", out_dir / f"{stem}{PNG_SUFFIX}"


def is_done(out_dir: str | Path, stem: str, save_img: bool) -> bool:
    """Outputs exist and parse (the JSON as SSA, the PNG as an image)."""
    from sedna_sam.formats.ssa import read_ssa
    from sedna_sam.images import image_size

    json_path, png_path = output_paths(out_dir, stem)
    if not json_path.is_file():
        return False
    try:
        read_ssa(json_path)
        if save_img:
            image_size(png_path)
    except SednaSamError as exc:
        log.warning("%s: redoing (%s)", json_path, exc)
        return False
    return True


def read_image(image_path: str | Path) -> np.ndarray:
    """An image file decoded for annotation: what :func:`annotate_file` reads, and what
    :func:`annotate_images` reads ahead in a thread for the next image."""
    from sedna_sam.images import read_image_rgb

    return read_image_rgb(image_path)


def annotate_file(
    annotator: Annotator,
    image_path: str | Path,
    out_dir: str | Path,
    save_img: bool = False,
    image: np.ndarray | None = None,
) -> dict[str, float]:
    """Pre-annotate one image file into ``out_dir``; returns the timings (incl. ``io``).
    ``image``: the file already decoded by :func:`read_image` (read ahead)."""
    from sedna_sam.annotate.overlay import render_overlay
    from sedna_sam.images import write_png
    from sedna_sam.storage import atomic_write_json, image_stem

    start = time.perf_counter()
    if image is None:
        image = read_image(image_path)
    io_seconds = time.perf_counter() - start
    result = annotator.annotate(image)
    json_path, png_path = output_paths(out_dir, image_stem(image_path))
    start = time.perf_counter()
    if save_img:
        write_png(png_path, render_overlay(image, result.class_map, annotator.labels, result.owner))
    atomic_write_json(json_path, result.document)  # last: its presence means "done"
    timings = dict(result.timings)
    timings["io"] = io_seconds + time.perf_counter() - start
    return timings


def remove_stale_temp_files(out_dir: str | Path) -> int:
    """Delete temp files a killed run left (``.<name>_semantic.<json|png>.*.tmp``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    stale = [p for p in out_dir.glob(".*_semantic.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temp files left by an interrupted run in %s", len(stale), out_dir)
    return len(stale)


def plan(
    images: Sequence[Path], out_dir: Path, save_img: bool, overwrite: bool, report: BatchReport
) -> list[Path]:
    """Images still to do: skips finished ones, fails duplicate stems."""
    from sedna_sam.storage import image_stem

    todo, seen = [], {}
    for path in images:
        stem = image_stem(path)
        if stem in seen:
            report.fail(str(path), f"same output name as {seen[stem]} ({stem}{JSON_SUFFIX}); rename one")
            continue
        seen[stem] = path.name
        if not overwrite and is_done(out_dir, stem, save_img):
            report.skip()
        else:
            todo.append(path)
    return todo


def device_for(rank: int, options: AnnotateOptions) -> str:
    """The device worker ``rank`` runs on: its own GPU (round robin) when on CUDA."""
    import torch

    want = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda":
        return f"cuda:{rank % max(1, torch.cuda.device_count())}"
    return want


def _set_threads(options: AnnotateOptions, world_size: int) -> None:
    import torch

    threads = options.num_threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)


def _shard_worker(
    rank: int,
    world_size: int,
    shard: list[str],
    out_dir: str,
    options: AnnotateOptions,
    save_img: bool,
    events,
) -> None:
    """Worker process: build the models on this rank's device, annotate the shard, send
    ("ok"|"fail", item, message, timings) per image, then ("exit", rank, "", {})."""
    from sedna_sam.log import setup_logging

    setup_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    try:
        _set_threads(options, world_size)
        annotator = Annotator.from_options(options, device_for(rank, options))
    except Exception as exc:  # report why this worker cannot start, then stop
        events.put(("init_failed", f"worker {rank}", f"{type(exc).__name__}: {exc}", {}))
        return
    for item in shard:
        try:
            timings = annotate_file(annotator, item, out_dir, save_img)
            events.put(("ok", item, "", timings))
        except SednaSamError as exc:
            events.put(("fail", item, str(exc), {}))
        except Exception as exc:  # one bad image must not stop the shard
            log.exception("%s failed", item)
            events.put(("fail", item, f"{type(exc).__name__}: {exc}", {}))
    events.put(("exit", f"worker {rank}", "", {}))


def annotate_images(
    images: Sequence[str | Path],
    out_dir: str | Path,
    options: AnnotateOptions,
    *,
    world_size: int = 1,
    save_img: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    annotator: Annotator | None = None,
    on_done: Callable[[Path], None] | None = None,
) -> BatchReport:
    """Pre-annotate ``images`` into ``out_dir`` (see module docstring); never raises for a
    bad image: the report lists failures (``report.exit_code`` is 1 then).

    ``annotator`` reuses already loaded models (single process only). ``on_done(image)``
    runs in this process after each image's outputs are written (e.g. to upload them);
    an error there fails that image.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    report = BatchReport("images")
    todo = plan([Path(p) for p in images], out_dir, save_img, overwrite, report)
    if report.skipped:
        log.info("%d images already annotated in %s (skipped)", report.skipped, out_dir)
    if not todo:
        return report
    totals: dict[str, float] = {}
    bar = tqdm(total=len(todo), unit="img", desc="annotate", disable=not progress, dynamic_ncols=True)

    def record(kind: str, item: str, message: str, timings: dict[str, float]) -> None:
        if kind == "ok" and on_done is not None:
            try:
                on_done(Path(item))
            except Exception as exc:  # noqa: BLE001 - fsspec/botocore raise their own types
                kind, message = "fail", f"outputs written but not delivered: {type(exc).__name__}: {exc}"
        if kind == "ok":
            report.ok()
            for k, v in timings.items():
                totals[k] = totals.get(k, 0.0) + v
            log.info("%s: %s", Path(item).name, ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        else:
            report.fail(item, message)
        bar.update(1)

    try:
        world_size = max(1, min(int(world_size), len(todo)))
        if world_size == 1:
            if options.num_threads:
                _set_threads(options, 1)
            annotator = annotator or Annotator.from_options(options, device_for(0, options))
            for item, image in read_ahead(todo):
                try:
                    record(
                        "ok", str(item), "", annotate_file(annotator, item, out_dir, save_img, image.result())
                    )
                except SednaSamError as exc:
                    record("fail", str(item), str(exc), {})
                except Exception as exc:
                    log.exception("%s failed", item)
                    record("fail", str(item), f"{type(exc).__name__}: {exc}", {})
        else:
            _run_workers(todo, out_dir, options, world_size, save_img, record)
    finally:
        bar.close()
    if report.done:
        parts = ", ".join(f"{k} {v / report.done:.2f}" for k, v in totals.items())
        log.info("seconds per image: %s", parts)
    return report


def read_ahead(paths: Sequence[Path]):
    """(path, future of :func:`read_image`) in order, the next image decoded in a thread
    while the current one is annotated; a read error is raised by ``future.result()``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(read_image, paths[0]) if paths else None
        for i, path in enumerate(paths):
            current = pending
            pending = pool.submit(read_image, paths[i + 1]) if i + 1 < len(paths) else None
            yield path, current


def _run_workers(
    todo: list[Path], out_dir: Path, options: AnnotateOptions, world_size: int, save_img: bool, record
) -> None:
    """Spawn ``world_size`` shard workers (image k goes to worker k mod N) and relay
    their events; images of a worker that dies are reported failed."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    shards = [[str(p) for p in todo[r::world_size]] for r in range(world_size)]
    procs = [
        ctx.Process(
            target=_shard_worker,
            args=(r, world_size, shards[r], str(out_dir), options, save_img, events),
            daemon=True,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    pending = {item for shard in shards for item in shard}
    running = world_size
    init_errors = []
    try:
        while running:
            try:
                kind, item, message, timings = events.get(timeout=2.0)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    break  # every worker is gone without saying so (killed)
                continue
            if kind in ("exit", "init_failed"):
                running -= 1
                if kind == "init_failed":
                    init_errors.append(f"{item}: {message}")
                    log.error("%s could not start: %s", item, message)
                continue
            pending.discard(item)
            record(kind, item, message, timings)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    if init_errors and len(init_errors) == world_size:
        raise SednaSamError("no worker could load the models:\n" + "\n".join(init_errors))
    for item in sorted(pending):
        record("fail", item, "not annotated: its worker stopped (see the log above)", {})


def annotate_dataset(
    data_dir: str | Path, out_dir: str | Path, options: AnnotateOptions, **kwargs: Any
) -> BatchReport:
    """:func:`annotate_images` over the images directly inside ``data_dir``."""
    from sedna_sam.storage import list_images

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SednaSamError(f"{data_dir}: image directory not found")
    images = list_images(data_dir)
    if not images:
        raise SednaSamError(f"{data_dir}: no images (jpg, png, bmp, tif, webp) found")
    return annotate_images(images, out_dir, options, **kwargs)
