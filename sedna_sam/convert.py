"""Batch converters over a dataset folder (docs/architecture.md section 3):

* :func:`ssa_to_ls`: ``ssa_output/<stem>_semantic.json`` -> ``ls_data/<stem>_semantic_poly_ls.json``
  (one Label Studio task each) and ``ls_data/tasks.json`` (all of them, for bulk import);
* :func:`ls_to_trainids`: a Label Studio export in ``ls_data/`` -> ``train_ids/<stem>_TrainIds.png``;
  :func:`exported_to_trainids` does the same for any list of parsed tasks (``ls pull
  --only-new`` passes just the new ones) and :func:`task_to_trainids` for one;
* :func:`ssa_to_trainids`: SSA straight to TrainIds (no correction step).

Each returns a :class:`BatchReport`: a bad item is reported and the batch goes on.
Writes are atomic; reruns skip outputs that are newer than their input (``overwrite``
forces them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sedna_sam.errors import BatchReport, InputError
from sedna_sam.formats.labelstudio import task_from_class_map
from sedna_sam.formats.ls_export import ExportedTask, read_export
from sedna_sam.formats.ls_images import image_ref_to_path, image_url
from sedna_sam.formats.ssa import read_ssa
from sedna_sam.formats.trainids import trainids_from_export, write_preview, write_trainids
from sedna_sam.images import image_size
from sedna_sam.labels import IGNORE_ID, LabelSet
from sedna_sam.storage import DatasetLayout, atomic_write_json

log = logging.getLogger(__name__)

SSA_SUFFIX = "_semantic.json"
TASKS_FILE = "tasks.json"


def _fresh(output: Path, *inputs: Path) -> bool:
    """True when ``output`` exists and is at least as new as every input."""
    if not output.exists():
        return False
    out_time = output.stat().st_mtime
    return all(p.stat().st_mtime <= out_time for p in inputs if p.exists())


def _read_task(path: Path) -> dict[str, Any] | None:
    """A task file written earlier, or None when it cannot be read (it is then redone)."""
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return task if isinstance(task, dict) else None


def _mean_predicted_iou(annotations: list[dict[str, Any]]) -> float | None:
    """Prediction score for Label Studio (sorting, active learning): the mean SAM
    ``predicted_iou`` of the SSA records, None when they carry none."""
    scores = [float(a["predicted_iou"]) for a in annotations if isinstance(a, dict) and "predicted_iou" in a]
    return round(float(np.mean(scores)), 4) if scores else None


def ssa_files(layout: DatasetLayout) -> list[tuple[str, Path]]:
    """(stem, path) of every ``<stem>_semantic.json`` in ``ssa_output/``, sorted. Names
    starting with "." are left out (see :func:`hidden_ssa_files`)."""
    if not layout.ssa_output.is_dir():
        raise InputError(f"{layout.ssa_output}: no ssa_output/ folder (run `sedna-sam annotate` first)")
    return sorted(
        (p.name[: -len(SSA_SUFFIX)], p)
        for p in layout.ssa_output.iterdir()
        if p.is_file() and p.name.endswith(SSA_SUFFIX) and not p.name.startswith(".")
    )


def hidden_ssa_files(layout: DatasetLayout) -> list[Path]:
    """SSA files whose name starts with "." (``..dotdot_semantic.json``): not converted,
    because dot-names are hidden and reserved for temporary files, but reported by the
    batch so that nothing is skipped silently. Temporary files of atomic writes
    (``.<name>.<random>.tmp``) are not listed."""
    if not layout.ssa_output.is_dir():
        return []
    return sorted(
        p
        for p in layout.ssa_output.iterdir()
        if p.name.startswith(".") and p.name.endswith(SSA_SUFFIX) and not p.name.endswith(".tmp")
    )


def _report_hidden(layout: DatasetLayout, report: BatchReport) -> None:
    for path in hidden_ssa_files(layout):
        report.fail(
            path.name,
            f"{path}: file names starting with '.' are hidden and not converted; rename it and its "
            f"image in {layout.raw_data.name}/ without the leading dot",
        )


def ssa_to_ls(
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    image_root: str | None = None,
    kind: str = "predictions",
    model_version: str = "sedna-sam-ssa",
    tolerance_px: float = 1.0,
    min_area_px: float = 4.0,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Write one Label Studio task per SSA file and ``ls_data/tasks.json`` with all tasks.

    ``image_root=None`` makes ``/data/local-files/?d=...`` URLs relative to
    $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; otherwise it is a plain URL prefix.
    A task is kept on rerun when it is newer than its SSA file and was made with the same
    options. Counts ``regions`` and ``tiny regions dropped`` (smaller than ``min_area_px``).
    """
    layout = DatasetLayout(Path(dataset_dir))
    report = BatchReport("tasks")
    options = {
        "kind": kind,
        "model_version": model_version,
        "tolerance_px": float(tolerance_px),
        "min_area_px": float(min_area_px),
        "image_root": image_root,
    }
    all_tasks: list[dict[str, Any]] = []
    _report_hidden(layout, report)
    for stem, ssa_path in tqdm(ssa_files(layout), desc="ssa-to-ls", unit="image", disable=not progress):
        out = layout.ls_task(stem)
        try:
            image = layout.find_image(stem)
            if image is None:
                raise InputError(f"{ssa_path}: no image {stem}.<ext> in {layout.raw_data}")
            url = image_url(image, image_root)
            if not overwrite and _fresh(out, ssa_path):
                task = _read_task(out)
                made_with = ((task or {}).get("meta") or {}).get("sedna_sam", {}).get("options")
                if task and made_with == options and task.get("data", {}).get("image") == url:
                    all_tasks.append(task)
                    report.skip()
                    report.count("up-to-date tasks kept")
                    continue
            ssa = read_ssa(ssa_path)
            width, height = image_size(image)
            if (width, height) != (ssa.width, ssa.height):
                raise InputError(
                    f"{ssa_path}: semantic mask is {ssa.width}x{ssa.height}, image {image.name} is {width}x{height}"
                )
            stats: dict[str, int] = {}
            task = task_from_class_map(
                ssa.class_map,
                labels,
                url,
                kind=kind,
                model_version=model_version,
                tolerance_px=tolerance_px,
                min_area_px=min_area_px,
                score=_mean_predicted_iou(ssa.annotations),
                stats=stats,
            )
            task["meta"] = {"sedna_sam": {"stem": stem, "source": ssa_path.name, "options": options}}
            atomic_write_json(out, task)
            all_tasks.append(task)
            report.ok()
            report.count("regions", stats["regions"])
            if stats["dropped"]:
                report.count("tiny regions dropped", stats["dropped"])
        except InputError as exc:
            report.fail(stem, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
            report.fail(stem, f"{ssa_path}: {type(exc).__name__}: {exc}")
    atomic_write_json(layout.ls_data / TASKS_FILE, all_tasks)
    log.info("wrote %d tasks to %s", len(all_tasks), layout.ls_data / TASKS_FILE)
    return report


def _image_size_for(task: ExportedTask, layout: DatasetLayout) -> tuple[int, int] | None:
    """(width, height) of the task's image in raw_data/ (or at the path it names), read
    from its header (an image over the pixel cap fails the task here)."""
    image = layout.find_image(task.stem)
    if image is None:
        candidate = Path(image_ref_to_path(task.image))
        image = candidate if candidate.is_file() else None
    return image_size(image) if image is not None else None


def task_to_trainids(
    task: ExportedTask,
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    ignore_unknown_labels: bool = False,
    preview: bool = False,
    notes: dict[str, int] | None = None,
) -> Path:
    """Rasterize one annotated exported task to ``train_ids/<stem>_TrainIds.png`` (and
    ``<stem>_TrainIds_color.png`` with ``preview``); returns the TrainIds path.
    Raises :class:`InputError` on bad input (naming the task). The annotation's size must
    be positive, within the pixel cap and, when the image is in ``raw_data/``, the image's."""
    if task.error:
        raise InputError(task.error)
    layout = DatasetLayout(Path(dataset_dir))
    task.size  # noqa: B018 - checks the annotation's sizes before any image is touched
    size = _image_size_for(task, layout)
    train_ids = trainids_from_export(
        task, labels, size, ignore_unknown_labels=ignore_unknown_labels, notes=notes
    )
    out = write_trainids(layout.trainids(task.stem), train_ids)
    if preview:
        write_preview(layout.trainids_preview(task.stem), train_ids, labels)
    return out


def exported_to_trainids(
    tasks: list[ExportedTask],
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    ignore_unknown_labels: bool = False,
    preview: bool = False,
    newer_than: Path | None = None,
    progress: bool = True,
) -> BatchReport:
    """Write TrainIds for each annotated task in ``tasks`` (any subset of an export).

    Tasks without an annotation are skipped and counted; when several tasks show the same
    image, the most recently updated one wins. With ``newer_than`` (the export file),
    outputs newer than it are kept.
    """
    report = BatchReport("label maps")
    layout = DatasetLayout(Path(dataset_dir))
    by_stem: dict[str, ExportedTask] = {}
    for task in tasks:
        if task.error:
            report.fail(task.name, task.error)
            continue
        if not task.annotated:
            report.skip()
            report.count("tasks without annotation")
            continue
        try:
            stem = task.stem
        except InputError as exc:
            report.fail(task.name, str(exc))
            continue
        if stem in by_stem:
            report.count("duplicate tasks for one image")
            if (task.updated_at or "") < (by_stem[stem].updated_at or ""):
                continue
        by_stem[stem] = task
    for stem, task in tqdm(by_stem.items(), desc="ls-to-trainids", unit="image", disable=not progress):
        try:
            if newer_than is not None and _fresh(layout.trainids(stem), newer_than):
                report.skip()
                report.count("outputs newer than the export kept (--overwrite redoes them)")
                continue
            task_to_trainids(
                task,
                layout.root,
                labels,
                ignore_unknown_labels=ignore_unknown_labels,
                preview=preview,
                notes=report.notes,
            )
            report.ok()
        except InputError as exc:
            report.fail(stem, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad task never stops the batch (MemoryError too)
            report.fail(stem, f"{task.source}: {task.name}: {type(exc).__name__}: {exc}")
    return report


def ls_to_trainids(
    dataset_dir: str | Path,
    export_name: str,
    labels: LabelSet,
    *,
    ignore_unknown_labels: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Read ``ls_data/<export_name>`` (JSON-MIN or full JSON export) and write a TrainIds
    PNG per annotated task. A malformed export raises :class:`InputError` naming it."""
    layout = DatasetLayout(Path(dataset_dir))
    path = Path(export_name) if Path(export_name).is_absolute() else layout.ls_data / export_name
    tasks = read_export(path)
    return exported_to_trainids(
        tasks,
        layout.root,
        labels,
        ignore_unknown_labels=ignore_unknown_labels,
        preview=preview,
        newer_than=None if overwrite else path,
        progress=progress,
    )


def ssa_to_trainids(
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    ignore_unknown_labels: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """SSA semantic maps straight to TrainIds PNGs (exact: no polygons in between).
    Class ids the labels config lacks fail the item, or become 255 with
    ``ignore_unknown_labels``."""
    layout = DatasetLayout(Path(dataset_dir))
    report = BatchReport("label maps")
    known = np.zeros(65536, dtype=bool)
    known[list(labels.id2label)] = True
    known[IGNORE_ID] = True
    _report_hidden(layout, report)
    for stem, ssa_path in tqdm(ssa_files(layout), desc="ssa-to-trainids", unit="image", disable=not progress):
        out = layout.trainids(stem)
        try:
            if not overwrite and _fresh(out, ssa_path):
                report.skip()
                report.count("outputs newer than their SSA file kept (--overwrite redoes them)")
                continue
            class_map = read_ssa(ssa_path).class_map.astype(np.uint16)
            unknown = ~known[class_map]
            if unknown.any():
                ids = sorted({int(v) for v in np.unique(class_map[unknown])})
                if not ignore_unknown_labels:
                    raise InputError(
                        f"{ssa_path}: class ids {ids} are not in the labels config {labels.source} "
                        "(pass --ignore-unknown-labels to map them to 255)"
                    )
                class_map[unknown] = IGNORE_ID
                report.count("unknown class pixels set to 255", int(unknown.sum()))
            write_trainids(out, class_map)
            if preview:
                write_preview(layout.trainids_preview(stem), class_map, labels)
            report.ok()
        except InputError as exc:
            report.fail(stem, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
            report.fail(stem, f"{ssa_path}: {type(exc).__name__}: {exc}")
    return report
