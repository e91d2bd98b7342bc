"""Push pre-annotated tasks to Label Studio and pull corrected annotations back.

The dataset-level steps (``ls push``, ``ls pull``) over the REST calls of
:class:`~sedna_sam.labelstudio.api.LabelStudioClient`; image references and the document
root are :mod:`sedna_sam.formats.ls_images`.

Push is idempotent, keyed by image path: before importing, the project's tasks are listed
and a task whose image (resolved under the local-files document root) is already there is
not imported again; its predictions are replaced, added to, or kept as they are when the
model version differs (``on_new_version``). A push cut off by a dead server is completed by
running it again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sedna_sam.errors import BatchReport, InputError, SednaSamError
from sedna_sam.formats.labelstudio import POLYGON_TYPE
from sedna_sam.formats.ls_images import DOCUMENT_ROOT_ENV, local_image_path, resolve_document_root, task_key
from sedna_sam.labels import LabelSet
from sedna_sam.labelstudio.api import LabelStudioClient
from sedna_sam.labelstudio.http import LabelStudioError, resolve_credentials
from sedna_sam.labelstudio.label_config import config_labels
from sedna_sam.storage import DatasetLayout, atomic_write_bytes, atomic_write_json

# docs/labelstudio.md documents LabelStudioClient under this module too (it lives in .api).
__all__ = [
    "LabelStudioClient",
    "pull_dataset",
    "pull_export",
    "push_dataset",
    "push_tasks",
    "read_tasks_file",
]

log = logging.getLogger(__name__)

NEW_VERSION_CHOICES = ("replace", "add", "keep")
PULL_STATE = "pull_state.json"  # in ls_data/: what `pull --only-new` has converted


def prediction_labels(tasks: Iterable[dict[str, Any]]) -> set[str]:
    """Polygon label names used in the tasks' predictions."""
    names: set[str] = set()
    for task in tasks:
        for pred in task.get("predictions") or []:
            for result in pred.get("result") or []:
                if result.get("type") == POLYGON_TYPE:
                    names.update((result.get("value") or {}).get("polygonlabels") or [])
    return names


def read_tasks_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: tasks file not found (run `sedna-sam convert ssa-to-ls` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed JSON ({exc})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) and "data" in t for t in data):
        raise InputError(f"{path}: expected a list of Label Studio tasks with a 'data' object each")
    return data


# ---------------------------------------------------------------------- push / pull


def push_tasks(
    client: LabelStudioClient,
    project: dict[str, Any],
    tasks: list[dict[str, Any]],
    *,
    batch_size: int = 100,
    on_new_version: str = "replace",
    document_root: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BatchReport:
    """Import ``tasks`` (with their predictions) into ``project`` in batches, idempotently.

    A task whose image the project already has is not imported again; when its
    predictions' model version is new, ``on_new_version`` says what happens: "replace"
    (delete the old predictions, add the new), "add" (keep both) or "keep" (leave it).
    Labels in predictions that the project's config lacks fail the whole push up front;
    local-files images missing under ``document_root`` fail their task. ``on_batch(n)`` is
    called after each imported batch (n tasks so far).
    """
    if on_new_version not in NEW_VERSION_CHOICES:
        raise SednaSamError(f"on_new_version {on_new_version!r}: use one of {', '.join(NEW_VERSION_CHOICES)}")
    report = BatchReport("tasks pushed")
    config = project.get("label_config", "")
    what = f"project {project['id']} ({project.get('title')!r}): its labeling config"
    missing = prediction_labels(tasks) - config_labels(config, what)
    if missing:
        raise LabelStudioError(
            f"project {project['id']} ({project.get('title')!r}): its labeling config lacks labels the "
            f"predictions use: {', '.join(sorted(missing))}; push with the labels config the tasks were made "
            "with (--config-path) into a new project, or add these labels in the project's settings"
        )
    root = resolve_document_root(document_root)
    existing: dict[str, dict[str, Any]] = {}
    for task in client.iter_tasks(project["id"]):
        existing.setdefault(task_key(task), task)
    log.info("project %d has %d tasks; pushing %d", project["id"], len(existing), len(tasks))
    new: list[dict[str, Any]] = []
    seen: set[str] = set()
    for task in tasks:
        key = task_key(task)
        if key in seen:
            report.count("duplicate tasks in input")
            continue
        seen.add(key)
        path = local_image_path(task, root)
        if path is not None and not path.is_file():
            report.fail(
                str(path),
                f"image not found under the document root {root} (task image {task['data'].get('image')}); "
                f"images must lie under {DOCUMENT_ROOT_ENV}",
            )
            continue
        if key not in existing:
            new.append(task)
            continue
        _update_predictions(client, existing[key], task, on_new_version, report)
    for start in range(0, len(new), batch_size):
        batch = new[start : start + batch_size]
        client.import_tasks(project["id"], batch)
        for _ in batch:
            report.ok()
        if on_batch is not None:
            on_batch(start + len(batch))
    return report


def _update_predictions(
    client: LabelStudioClient,
    current: dict[str, Any],
    task: dict[str, Any],
    on_new_version: str,
    report: BatchReport,
) -> None:
    have = {p.get("model_version") for p in current.get("predictions") or []}
    wanted = task.get("predictions") or []
    fresh = [p for p in wanted if p.get("model_version") not in have]
    if not fresh or on_new_version == "keep":
        report.skip()
        report.count("already in the project")
        return
    if on_new_version == "replace":
        for old in current.get("predictions") or []:
            client.delete_prediction(old["id"])
        report.count("predictions replaced")
    else:
        report.count("predictions added")
    for pred in fresh:
        client.create_prediction(current["id"], pred)
    report.ok()


def pull_export(
    client: LabelStudioClient,
    project_id: int,
    dataset_dir: str | Path,
    *,
    export_format: str = "JSON_MIN",
    name: str | None = None,
) -> Path:
    """Export the project and save it atomically as ``ls_data/<name>`` (default
    ``export_<format>.json``); returns the path."""
    data = client.export(project_id, export_format)
    try:
        json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelStudioError(f"project {project_id}: the export is not JSON ({exc})") from None
    except RecursionError:
        pass  # JSON nested too deeply somewhere: read_export fails that task alone
    out = DatasetLayout(Path(dataset_dir)).ls_data / (name or f"export_{export_format.lower()}.json")
    atomic_write_bytes(out, data)
    log.info("saved %s export of project %d to %s", export_format, project_id, out)
    return out


def pull_dataset(
    client: LabelStudioClient,
    project: str | int,
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    export_format: str = "JSON_MIN",
    only_new: bool = False,
    preview: bool = False,
    ignore_unknown_labels: bool = False,
) -> BatchReport:
    """Export ``project`` into ``ls_data/`` and write TrainIds. With ``only_new`` only tasks
    whose latest annotation changed since the last pull are converted; the pull state
    (``ls_data/pull_state.json``: task id -> annotation id + updated_at) is saved after the
    conversion, without the tasks that failed, so they are retried next time."""
    from sedna_sam.convert import exported_to_trainids
    from sedna_sam.formats.ls_export import read_export

    layout = DatasetLayout(Path(dataset_dir))
    proj = client.get_project(project)
    path = pull_export(client, proj["id"], layout.root, export_format=export_format)
    tasks = read_export(path)
    state_path = layout.ls_data / PULL_STATE
    state: dict[str, Any] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, OSError) as exc:
            log.warning("%s: unreadable pull state (%s); converting everything", state_path, exc)
    seen: dict[str, Any] = dict(state.get(str(proj["id"]), {}))

    def version(t) -> list:
        return [t.annotation_id, t.updated_at]

    chosen = [t for t in tasks if not only_new or seen.get(str(t.task_id)) != version(t)]
    report = exported_to_trainids(
        chosen,
        layout.root,
        labels,
        preview=preview,
        ignore_unknown_labels=ignore_unknown_labels,
        progress=True,
    )
    if only_new:
        report.count("unchanged since the last pull", len(tasks) - len(chosen))
    failed = {item for item, _ in report.failed}
    for t in chosen:
        if not t.annotated or t.error or t.task_id is None:
            continue  # a malformed task is retried next time
        try:
            stem = t.stem
        except InputError:
            continue
        if stem not in failed:
            seen[str(t.task_id)] = version(t)
    state[str(proj["id"])] = seen
    atomic_write_json(state_path, state, indent=1)
    report.export_path = path  # type: ignore[attr-defined]
    return report


def push_dataset(
    dataset_dir: str | Path,
    labels: LabelSet,
    *,
    url: str | None = None,
    token: str | None = None,
    project: str = "sedna-sam",
    batch_size: int = 100,
    on_new_version: str = "replace",
    document_root: str | Path | None = None,
    client: LabelStudioClient | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BatchReport:
    """`ls push` as a function: project (created if missing), local storage over
    ``raw_data/``, then the tasks of ``ls_data/tasks.json`` (made from ``ssa_output/`` by
    the converter first when missing)."""
    from sedna_sam.convert import TASKS_FILE, ssa_to_ls

    layout = DatasetLayout(Path(dataset_dir))
    root = resolve_document_root(document_root)
    tasks_path = layout.ls_data / TASKS_FILE
    if not tasks_path.exists():
        log.info("%s missing: converting %s first", tasks_path, layout.ssa_output)
        previous = os.environ.get(DOCUMENT_ROOT_ENV)
        os.environ[DOCUMENT_ROOT_ENV] = str(root)
        try:
            made = ssa_to_ls(layout.root, labels, progress=False)
        finally:
            if previous is None:
                os.environ.pop(DOCUMENT_ROOT_ENV, None)
            else:
                os.environ[DOCUMENT_ROOT_ENV] = previous
        if made.failed:
            log.error("ssa-to-ls: %s", made.summary())
    tasks = read_tasks_file(tasks_path)
    own = client is None
    if own:
        client = LabelStudioClient(*resolve_credentials(url, token))
    try:
        proj = client.ensure_project(project, labels)
        client.ensure_local_storage(proj["id"], layout.raw_data, root)
        report = push_tasks(
            client,
            proj,
            tasks,
            batch_size=batch_size,
            on_new_version=on_new_version,
            document_root=root,
            on_batch=on_batch,
        )
        report.project = proj  # type: ignore[attr-defined]
        return report
    finally:
        if own:
            client.close()


def project_url(base_url: str, project_id: int) -> str:
    return f"{base_url.rstrip('/')}/projects/{project_id}/data"
