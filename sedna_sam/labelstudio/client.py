"""Push pre-annotated tasks to Label Studio and pull corrected annotations back.

One small layer over Label Studio's REST API (the one label-studio-sdk 2.x wraps;
:func:`sdk` gives the SDK's ``LabelStudio`` on the same URL and token). Every call goes
through :meth:`LabelStudioClient.request`, which retries connection errors and 5xx with
exponential backoff and turns 401/403/404 into messages a person can act on. The token
is only ever put in the ``Authorization`` header: never logged, never in an error.

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
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sedna_sam.deps import need
from sedna_sam.errors import BatchReport, InputError, SednaSamError
from sedna_sam.formats.labelstudio import POLYGON_TYPE
from sedna_sam.formats.ls_images import DOCUMENT_ROOT_ENV
from sedna_sam.labels import LabelSet, labeling_config_xml
from sedna_sam.storage import DatasetLayout, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
EXPORT_FORMATS = ("JSON_MIN", "JSON")
NEW_VERSION_CHOICES = ("replace", "add", "keep")
PULL_STATE = "pull_state.json"  # in ls_data/: what `pull --only-new` has converted


class LabelStudioError(SednaSamError):
    """Label Studio answered with an error (message says what to do)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(LabelStudioError):
    """No answer (connection refused/reset, timeout, 5xx) after all retries."""


def resolve_credentials(url: str | None, token: str | None) -> tuple[str, str]:
    """URL and token from the arguments, else $LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY."""
    url = url or os.environ.get(URL_ENV)
    token = token or os.environ.get(TOKEN_ENV)
    if not url:
        raise SednaSamError(f"no Label Studio URL: pass --url or set {URL_ENV}")
    if not token:
        raise SednaSamError(
            f"no Label Studio API token: set {TOKEN_ENV} (Account & Settings > Access Token, "
            "or the api-token file `sedna-sam ls up` wrote) or pass --token-file"
        )
    return url.rstrip("/"), token


class LabelStudioClient:
    """REST calls with retries. ``retries`` extra attempts, sleeping ``backoff_s * 2**i``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.5,
    ):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        httpx = need("httpx", "ls", "Label Studio's API")
        self._transport_error = httpx.TransportError
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout_s,
            follow_redirects=True,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        """One API call; raises :class:`LabelStudioError` with an actionable message."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("Label Studio %s %s: %s; retry %d/%d in %.1f s",
                            method, path, last, attempt, self.retries, delay)  # fmt: skip
                time.sleep(delay)
            try:
                resp = self._http.request(method, path, **kw)
            except self._transport_error as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API token (HTTP {resp.status_code} on "
                    f"{method} {path}): check {TOKEN_ENV} / --token-file (legacy token; a server "
                    "started by `sedna-sam ls up` keeps it in <data-dir>/api-token)",
                    resp.status_code,
                )
            if resp.status_code == 404:
                raise LabelStudioError(f"Label Studio {method} {path}: not found (HTTP 404)", 404)
            if resp.status_code >= 400:
                raise LabelStudioError(
                    f"Label Studio {method} {path}: HTTP {resp.status_code}: {resp.text[:500]}",
                    resp.status_code,
                )
            return resp
        raise ServerUnreachable(
            f"Label Studio at {self.url} did not answer {method} {path} after "
            f"{self.retries + 1} attempts ({last}); is it running? Rerun the command to resume."
        )

    def json(self, method: str, path: str, **kw) -> Any:
        resp = self.request(method, path, **kw)
        return resp.json() if resp.content else None

    # ------------------------------------------------------------------ projects

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with this exact title (lowest id if several), or None."""
        page, found = 1, []
        while True:
            data = self.json("GET", "/api/projects/", params={"page": page, "page_size": 100, "title": title})
            items = data.get("results", []) if isinstance(data, dict) else data
            found += [p for p in items if p.get("title") == title]
            if not isinstance(data, dict) or not data.get("next"):
                break
            page += 1
        return min(found, key=lambda p: p["id"]) if found else None

    def get_project(self, project: int | str) -> dict[str, Any]:
        """A project by id or title; 404 / unknown title -> error naming it."""
        if isinstance(project, int) or str(project).isdigit():
            try:
                return self.json("GET", f"/api/projects/{int(project)}/")
            except LabelStudioError as exc:
                if exc.status == 404:
                    raise LabelStudioError(
                        f"Label Studio at {self.url} has no project {project}", 404
                    ) from None
                raise
        found = self.find_project(str(project))
        if found is None:
            raise LabelStudioError(
                f"Label Studio at {self.url} has no project titled {project!r} (push first: `sedna-sam ls push`)",
                404,
            )
        return self.json("GET", f"/api/projects/{found['id']}/")

    def ensure_project(self, title: str, labels: LabelSet) -> dict[str, Any]:
        """The project titled ``title``, created with our labeling config when missing."""
        if len(title.strip()) < 3:
            raise SednaSamError(f"project title {title!r}: Label Studio needs at least 3 characters")
        found = self.find_project(title)
        if found is not None:
            return self.json("GET", f"/api/projects/{found['id']}/")
        log.info("creating Label Studio project %r", title)
        return self.json(
            "POST", "/api/projects/", json={"title": title, "label_config": labeling_config_xml(labels)}
        )

    # ------------------------------------------------------------------ storage

    def ensure_local_storage(
        self, project_id: int, path: str | Path, document_root: str | Path | None = None
    ) -> dict:
        """Connect a local-files import storage covering ``path`` (so Label Studio serves
        the images); kept as is when one with that path exists. ``path`` must lie under the
        server's document root (checked here when ``document_root`` is known)."""
        path = str(Path(path).resolve())
        if document_root is not None:
            root = Path(document_root).resolve()
            if not Path(path).is_relative_to(root):
                raise InputError(
                    f"{path}: images are outside the Label Studio document root {root}; "
                    f"move the dataset under it or start Label Studio with {DOCUMENT_ROOT_ENV} set to a parent folder"
                )
        existing = self.json("GET", "/api/storages/localfiles", params={"project": project_id}) or []
        for storage in existing:
            if storage.get("path") == path:
                return storage
        try:
            return self.json(
                "POST",
                "/api/storages/localfiles",
                json={
                    "project": project_id,
                    "path": path,
                    "title": Path(path).name[:64] or "images",
                    "use_blob_urls": False,
                },  # fmt: skip
            )
        except LabelStudioError as exc:
            if exc.status == 400:
                raise LabelStudioError(
                    f"Label Studio refused local storage {path}: {exc}. The server must run with "
                    f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and {DOCUMENT_ROOT_ENV} a parent of {path}",
                    400,
                ) from None
            raise

    # ------------------------------------------------------------------ tasks

    def iter_tasks(self, project_id: int, page_size: int = 200) -> Iterable[dict[str, Any]]:
        """Every task of the project with its predictions (paged)."""
        page = 1
        while True:
            try:
                data = self.json(
                    "GET", "/api/tasks",
                    params={"project": project_id, "page": page, "page_size": page_size, "fields": "all"},
                )  # fmt: skip
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return
                raise
            tasks = data.get("tasks", []) if isinstance(data, dict) else data
            yield from tasks
            total = data.get("total") if isinstance(data, dict) else None
            if not tasks or len(tasks) < page_size or (total is not None and page * page_size >= total):
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import one batch in one request; returns the new task ids."""
        data = self.json(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks
        )
        return list((data or {}).get("task_ids") or [])

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> dict:
        body = {"task": task_id, "result": prediction.get("result", []),
                "model_version": prediction.get("model_version"), "score": prediction.get("score")}  # fmt: skip
        return self.json("POST", "/api/predictions/", json=body)

    def delete_prediction(self, prediction_id: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction_id}/")

    def export(self, project_id: int, export_format: str = "JSON_MIN") -> bytes:
        """The project's export (JSON_MIN lists annotated tasks only) as raw bytes."""
        if export_format not in EXPORT_FORMATS:
            raise SednaSamError(f"export format {export_format!r}: use one of {', '.join(EXPORT_FORMATS)}")
        return self.request(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": export_format, "download_all_tasks": "false"},
        ).content


# ---------------------------------------------------------------------- pure helpers


def config_labels(label_config: str) -> set[str]:
    """Label names a labeling config offers (``<Label value="...">``)."""
    return set(re.findall(r'<Label\b[^>]*\bvalue="([^"]*)"', label_config or ""))


def prediction_labels(tasks: Iterable[dict[str, Any]]) -> set[str]:
    """Polygon label names used in the tasks' predictions."""
    names: set[str] = set()
    for task in tasks:
        for pred in task.get("predictions") or []:
            for result in pred.get("result") or []:
                if result.get("type") == POLYGON_TYPE:
                    names.update((result.get("value") or {}).get("polygonlabels") or [])
    return names


def task_key(task: dict[str, Any]) -> str:
    """The idempotency key: the task's image reference, local-files ``?d=`` decoded so the
    same image keys the same however the URL was encoded."""
    from urllib.parse import parse_qs, urlparse

    ref = str((task.get("data") or {}).get("image", ""))
    parsed = urlparse(ref)
    if parsed.path.rstrip("/").endswith("/data/local-files"):
        values = parse_qs(parsed.query).get("d") or [""]
        return "local:" + values[0].lstrip("/")
    return ref


def local_image_path(task: dict[str, Any], document_root: Path) -> Path | None:
    """File a local-files task points at (None for other URLs)."""
    key = task_key(task)
    return document_root / key[len("local:") :] if key.startswith("local:") else None


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
    missing = prediction_labels(tasks) - config_labels(project.get("label_config", ""))
    if missing:
        raise LabelStudioError(
            f"project {project['id']} ({project.get('title')!r}): its labeling config lacks labels the "
            f"predictions use: {', '.join(sorted(missing))}; push with the labels config the tasks were made "
            "with (--config-path) into a new project, or add these labels in the project's settings"
        )
    root = Path(document_root or os.environ.get(DOCUMENT_ROOT_ENV) or "/").resolve()
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
    root = Path(document_root or os.environ.get(DOCUMENT_ROOT_ENV) or "/").resolve()
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
