"""Label Studio's REST API as sedna-sam uses it: projects, local storage, tasks,
predictions, exports (the calls label-studio-sdk 2.x wraps, on our one HTTP stack,
:mod:`sedna_sam.labelstudio.http`). Errors say what to do; the token is never logged.
Pushing and pulling datasets with these calls is :mod:`sedna_sam.labelstudio.client`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.formats.ls_images import DOCUMENT_ROOT_ENV, SERVING_ENV
from sedna_sam.labels import LabelSet, labeling_config_xml
from sedna_sam.labelstudio.http import (
    DEFAULT_TIMEOUT_S,
    LabelStudioError,
    check_status,
    open_client,
    send_with_retries,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("JSON_MIN", "JSON")


class LabelStudioClient:
    """Label Studio's REST endpoints that sedna-sam uses, on one httpx client (:mod:`.http`).

    Connection errors are retried ``retries`` times by the transport, 429/5xx answers
    ``retries`` times sleeping ``backoff_s * 2**i`` (:func:`.http.send_with_retries`)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 5,
        backoff_s: float = 0.5,
    ):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = open_client(self.url, token, timeout_s=timeout_s, retries=retries)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, method: str, path: str, **kw) -> httpx.Response:
        """One API call with retries; the answer whatever its status (for callers that word
        their own errors, :func:`.http.check_status` for the others)."""
        return send_with_retries(
            self._http, method, path, retries=self.retries, backoff_s=self.backoff_s, **kw
        )

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        """One API call; raises :class:`LabelStudioError` with an actionable message."""
        return check_status(self.send(method, path, **kw), method, path, self.url)

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
                    f"{SERVING_ENV}=true and {DOCUMENT_ROOT_ENV} a parent of {path}",
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
