"""The service's calls into the other areas, one small function each, so the stages in
:mod:`sedna_sam.cloud.service` read as the pipeline and every outside API is called in
one place:

- pre-annotation of one image: :mod:`sedna_sam.annotate.engine` (SAM + semantic voting);
- polygons and TrainIds: :mod:`sedna_sam.formats.labelstudio`, :mod:`sedna_sam.convert`;
- Label Studio: :mod:`sedna_sam.labelstudio.client`;
- the Sedna txt index: :mod:`sedna_sam.lifelong.data`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sedna_sam.storage import DatasetLayout, atomic_write_json

log = logging.getLogger(__name__)

MODEL_VERSION = "sedna-sam-cloud"


# ----------------------------------------------------------------------------- pre-annotation

DEFAULT_SEMANTIC_MODEL = "nvidia/segformer-b5-finetuned-cityscapes-1024-1024"  # SSA's Cityscapes branch


def build_engine(config):
    """B's :class:`~sedna_sam.annotate.engine.Annotator` from ``config.annotate``:
    ``sam_checkpoint``, ``sam_model``, ``semantic_model``, ``device``, ``models_dir``,
    ``sam`` (SamParams overrides), ``tiny_random_models`` (the tiny random-weight SAM and
    Segformer of ``sedna-sam demo``, built once under ``<dataset>/.tiny-models``)."""
    from types import SimpleNamespace

    from sedna_sam.annotate.engine import AnnotateOptions, Annotator
    from sedna_sam.annotate.sam import sam_params
    from sedna_sam.errors import SednaSamError
    from sedna_sam.models import CHECKPOINTS

    opts = dict(config.annotate or {})
    overrides = dict(opts.get("sam") or {})
    ckpt, semantic = opts.get("sam_checkpoint"), opts.get("semantic_model")
    if opts.get("tiny_random_models") and not (ckpt and semantic):
        from sedna_sam.commands.annotate import _demo_models

        demo_args = SimpleNamespace(ckpt_path=None, semantic_model=None, tiny_random_models=True)
        tiny_ckpt, tiny_semantic, tiny_overrides, _ = _demo_models(
            demo_args, Path(config.dataset_dir) / ".tiny-models", config.labels
        )
        ckpt, semantic = ckpt or tiny_ckpt, semantic or tiny_semantic
        overrides = {**tiny_overrides, **overrides}
    if not ckpt:
        models_dir = Path(opts.get("models_dir") or ".")
        ckpt = models_dir / CHECKPOINTS["vit_h"].filename
        if not Path(ckpt).is_file():
            raise SednaSamError(
                f"no SAM checkpoint at {ckpt}: run `sedna-sam models download vit_h --dir {models_dir}`, "
                "pass --sam-checkpoint, or --tiny-random-models for a demo"
            )
    options = AnnotateOptions(
        ckpt_path=str(ckpt),
        semantic_model=str(semantic or DEFAULT_SEMANTIC_MODEL),
        labels=config.labels,
        model_type=opts.get("sam_model"),
        device=opts.get("device"),
        sam=sam_params(None, **overrides),
    )
    log.info("loading SAM %s and semantic model %s", options.ckpt_path, options.semantic_model)
    return Annotator.from_options(options)


def pre_annotate(engine, config, layout: DatasetLayout, image: Path) -> None:
    """SSA JSON (+ overlay PNG) for ``image`` unless a valid one exists, then its Label
    Studio task. Both writes are atomic, so a rerun after a crash redoes at most one."""
    from sedna_sam.annotate.engine import annotate_file, is_done
    from sedna_sam.formats.ssa import read_ssa

    if not is_done(layout.ssa_output, image.stem, save_img=True):
        timings = annotate_file(engine, image, layout.ssa_output, save_img=True)
        log.debug("%s: %s", image.name, ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    ssa = read_ssa(layout.ssa_json(image.stem))
    write_task(layout, image, ssa.class_map, config.labels)


# ----------------------------------------------------------------------------- tasks and labels


def write_task(layout: DatasetLayout, image: Path, class_map, labels) -> dict[str, Any]:
    """The Label Studio task (polygon predictions) of one pre-annotated image, written to
    ``ls_data/<stem>_semantic_poly_ls.json``; returns it."""
    from sedna_sam.formats.labelstudio import image_url, task_from_class_map

    task = task_from_class_map(
        class_map, labels, image_url(image), model_version=MODEL_VERSION, min_area_px=4.0
    )
    task["meta"] = {"sedna_sam": {"stem": image.stem, "source": "cloud serve"}}
    atomic_write_json(layout.ls_task(image.stem), task)
    return task


def trainids_from_task(task: dict[str, Any], dataset_dir: Path, labels) -> Path:
    """Rasterize the newest non-cancelled annotation of one Label Studio task (as the API
    returns it: ``{"id", "data", "annotations": [...]}``) to ``train_ids/<stem>_TrainIds.png``."""
    from sedna_sam.convert import task_to_trainids
    from sedna_sam.errors import InputError
    from sedna_sam.formats.labelstudio import parse_export

    (exported,) = parse_export(task, source=f"Label Studio task {task.get('id')}")
    if not exported.annotated:
        raise InputError(
            f"Label Studio task {task.get('id')}: no submitted annotation (cancelled or deleted?)"
        )
    return task_to_trainids(exported, dataset_dir, labels)


def append_index(index_path: Path, image: Path, label: Path) -> bool:
    """Append ``<image> <label>`` to the Sedna txt index (atomic; a pair already there is
    not added again). True when the line was added now."""
    from sedna_sam.lifelong.data import append_index_lines

    return bool(append_index_lines(index_path, [(image, label)]))


# ----------------------------------------------------------------------------- Label Studio

WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
WEBHOOK_SECRET_HEADER = "X-Sedna-Sam-Secret"  # the header /webhook checks (server.SECRET_HEADER)


class LabelStudioProject:
    """The one Label Studio project the service feeds, over the REST API.

    Made once per process: finds (or creates) the project, connects a local-files storage
    over the dataset's raw_data/ so Label Studio can show the images, registers the
    webhook, and remembers which image each task shows so a push is never repeated.
    """

    def __init__(
        self, url: str, token: str, project: str, labels, raw_data: Path, timeout_s: float = 60.0
    ) -> None:
        import requests

        from sedna_sam.errors import SednaSamError

        if not url or not token:
            raise SednaSamError(
                "Label Studio is not configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.project_id = self._project(project, labels)
        self.raw_data = Path(raw_data)
        self._task_by_image: dict[str, int] | None = None

    def call(self, method: str, path: str, **kw) -> Any:
        from sedna_sam.errors import SednaSamError

        resp = self.session.request(method, self.url + path, timeout=self.timeout_s, **kw)
        if resp.status_code >= 400:
            raise SednaSamError(f"Label Studio {method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    def _project(self, project: str, labels) -> int:
        from sedna_sam.labels import labeling_config_xml

        if str(project).isdigit():
            return int(self.call("GET", f"/api/projects/{int(project)}")["id"])
        found = self.call("GET", "/api/projects", params={"title": project, "page_size": 1000})
        for p in found.get("results", found) if isinstance(found, dict) else found:
            if p.get("title") == project:
                return int(p["id"])
        made = self.call(
            "POST", "/api/projects", json={"title": project, "label_config": labeling_config_xml(labels)}
        )
        log.info("made Label Studio project %r (id %s)", project, made["id"])
        return int(made["id"])

    def connect_storage(self) -> None:
        """A local-files storage over raw_data/ (once), so task images load in the editor."""
        path = str(self.raw_data.resolve())
        self.raw_data.mkdir(parents=True, exist_ok=True)
        storages = self.call("GET", "/api/storages/localfiles", params={"project": self.project_id})
        if any(s.get("path") == path for s in storages):
            return
        self.call(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": self.project_id,
                "path": path,
                "title": "sedna-sam raw_data",
                "use_blob_urls": False,
            },
        )

    def ensure_webhook(self, url: str, secret: str) -> bool:
        """Register (once) a webhook posting ANNOTATION_CREATED/UPDATED to ``url`` with the
        secret as a header. False (polling only) when Label Studio refuses the URL."""
        from sedna_sam.errors import SednaSamError

        body = {
            "project": self.project_id,
            "url": url,
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": WEBHOOK_ACTIONS,
            "headers": {WEBHOOK_SECRET_HEADER: secret},
            "is_active": True,
        }
        try:
            for hook in self.call("GET", "/api/webhooks/", params={"project": self.project_id}):
                if hook.get("url") == url and hook.get("project") == self.project_id:
                    self.call(
                        "PATCH",
                        f"/api/webhooks/{hook['id']}/",
                        json={k: v for k, v in body.items() if k != "project"},
                    )
                    return True
            self.call("POST", "/api/webhooks/", json=body)
        except SednaSamError as exc:
            # The message may echo the request; it never holds the header values.
            log.warning(
                "Label Studio refused the webhook %s (%s); polling only. A private address needs "
                "Label Studio started with SSRF_PROTECTION_ENABLED=false",
                url,
                str(exc).split(":", 2)[-1][:200],
            )
            return False
        log.info("Label Studio posts annotation events to %s", url)
        return True

    def iter_tasks(self, fields: str = "task_only"):
        """Every task of the project (paged); ``fields="all"`` includes annotations."""
        page = 1
        while True:
            resp = self.session.get(
                f"{self.url}/api/tasks",
                params={"project": self.project_id, "page": page, "page_size": 100, "fields": fields},
                timeout=self.timeout_s,
            )
            if resp.status_code == 404:  # past the last page
                return
            if resp.status_code >= 400:
                self.call("GET", "/api/tasks", params={"project": self.project_id, "page": page})  # raises
            tasks = resp.json().get("tasks", [])
            yield from tasks
            if len(tasks) < 100:
                return
            page += 1

    def task(self, task_id: int) -> dict[str, Any]:
        return self.call("GET", f"/api/tasks/{int(task_id)}")

    def push(self, task: dict[str, Any]) -> int:
        """Import ``task`` unless a task for the same image exists; returns its id."""
        image = task["data"]["image"]
        if self._task_by_image is None:
            self._task_by_image = {t["data"].get("image"): int(t["id"]) for t in self.iter_tasks()}
        if image in self._task_by_image:
            return self._task_by_image[image]
        self.call("POST", f"/api/projects/{self.project_id}/import", json=[task])
        # The import answer has no task ids: look the new one up by its image.
        self._task_by_image = {t["data"].get("image"): int(t["id"]) for t in self.iter_tasks()}
        if image not in self._task_by_image:
            from sedna_sam.errors import SednaSamError

            raise SednaSamError(f"Label Studio imported {image} but lists no task for it")
        return self._task_by_image[image]


def connect_label_studio(config) -> LabelStudioProject:
    ls = LabelStudioProject(
        config.ls_url, config.ls_token, config.project, config.labels, Path(config.dataset_dir) / "raw_data"
    )
    ls.connect_storage()
    if config.webhook_url:
        if config.webhook_secret:
            ls.ensure_webhook(config.webhook_url, config.webhook_secret)
        else:
            log.warning("--webhook-url given but SEDNA_SAM_WEBHOOK_SECRET is unset: no webhook registered")
    return ls


def push_task(ls: LabelStudioProject, layout: DatasetLayout, image: Path) -> int:
    """Push the task written for ``image`` (ls_data/<stem>_semantic_poly_ls.json)."""
    import json

    task = json.loads(layout.ls_task(image.stem).read_text(encoding="utf-8"))
    return ls.push(task)


def write_trainids_from_task(
    ls: LabelStudioProject, labels, task_id: int, annotation_id, label: Path
) -> Path:
    """Fetch task ``task_id`` with its annotations and write its TrainIds PNG."""
    written = trainids_from_task(ls.task(task_id), label.parent.parent, labels)
    if written.resolve() != label.resolve():
        from sedna_sam.errors import SednaSamError

        raise SednaSamError(f"task {task_id} names image {written.name}, expected {label.name}")
    return written


def latest_annotations(ls: LabelStudioProject, task_ids: list[int]) -> dict[int, tuple[int, str | None]]:
    """{task id: (annotation id, updated_at)} of the newest non-cancelled annotation of
    each of ``task_ids`` that has one (one paged listing of the project)."""
    wanted = set(task_ids)
    found: dict[int, tuple[int, str | None]] = {}
    for task in ls.iter_tasks(fields="all"):
        if task.get("id") not in wanted:
            continue
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if done:
            newest = max(done, key=lambda a: (str(a.get("updated_at") or ""), int(a.get("id") or 0)))
            found[int(task["id"])] = (int(newest["id"]), newest.get("updated_at"))
    return found
