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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sedna_sam.registry import Registry
from sedna_sam.storage import DatasetLayout, atomic_write_json

if TYPE_CHECKING:
    from sedna_sam.annotate.engine import AnnotateOptions
    from sedna_sam.cloud.config import ServiceConfig

log = logging.getLogger(__name__)

MODEL_VERSION = "sedna-sam-cloud"


# ----------------------------------------------------------------------------- pre-annotation

DEFAULT_SEMANTIC_MODEL = "nvidia/segformer-b5-finetuned-cityscapes-1024-1024"  # SSA's Cityscapes branch

# How a sample is pre-annotated (``--pre-annotation``): each entry builds an engine with
# ``annotate(image) -> PreAnnotation`` and ``labels``, what annotate_file calls.
PRE_ANNOTATIONS: Registry[Any] = Registry("pre-annotation")


def build_engine(config: ServiceConfig):
    """The pre-annotation engine chosen by ``config.pre_annotation.kind`` (default ``sam``:
    SAM + semantic voting; ``semantic``: the semantic model alone)."""
    return PRE_ANNOTATIONS.create(config.pre_annotation.kind or "sam", config=config)


def tiny_models_dir(config: ServiceConfig) -> Path:
    """Where ``tiny_random_models`` are built: under the dataset, once."""
    return Path(config.dataset_dir) / ".tiny-models" / "models"


def sam_annotate_options(config: ServiceConfig) -> AnnotateOptions:
    """``config.pre_annotation`` resolved into what ``annotate`` builds its engine from:
    the SAM checkpoint given, else the tiny random-weight models (``tiny_random_models``,
    built under the dataset; also their SAM parameters unless ``sam`` is given), else the
    models directory's vit_h; the semantic model given, else SSA's Cityscapes Segformer."""
    from sedna_sam.annotate.engine import AnnotateOptions
    from sedna_sam.annotate.sam import sam_params
    from sedna_sam.errors import SednaSamError
    from sedna_sam.models import CHECKPOINTS

    opts = config.pre_annotation
    params = opts.sam
    ckpt, semantic = opts.sam_checkpoint, opts.semantic_model
    if opts.tiny_random_models and not (ckpt and semantic):
        from sedna_sam.models import tiny_random_models

        log.warning("--tiny-random-models: RANDOM-weight SAM and Segformer, the pre-annotations mean nothing")
        tiny_ckpt, tiny_semantic, tiny_overrides = tiny_random_models(tiny_models_dir(config), config.labels)
        ckpt, semantic = ckpt or tiny_ckpt, semantic or tiny_semantic
        params = params or sam_params(None, **tiny_overrides)
    if not ckpt:
        models_dir = Path(opts.models_dir or ".")
        ckpt = models_dir / CHECKPOINTS["vit_h"].filename
        if not Path(ckpt).is_file():
            raise SednaSamError(
                f"no SAM checkpoint at {ckpt}: run `sedna-sam models download vit_h --dir {models_dir}`, "
                "pass --sam-checkpoint, or --tiny-random-models for a demo"
            )
    return AnnotateOptions(
        ckpt_path=str(ckpt),
        semantic_model=str(semantic or DEFAULT_SEMANTIC_MODEL),
        labels=config.labels,
        model_type=opts.sam_model,
        semantic_backend=opts.semantic_backend,
        device=opts.device,
        sam=params or sam_params(None),
    )


@PRE_ANNOTATIONS.register("sam")
def build_sam_engine(config: ServiceConfig):
    """The :class:`~sedna_sam.annotate.engine.Annotator` of :func:`sam_annotate_options`."""
    from sedna_sam.annotate.engine import Annotator

    options = sam_annotate_options(config)
    log.info("loading SAM %s and semantic model %s", options.ckpt_path, options.semantic_model)
    return Annotator.from_options(options)


class SemanticOnly:
    """Pre-annotation by the semantic model alone: its class map becomes the task's
    polygons, with no SAM masks to sharpen the boundaries.

    Why: SAM is most of the cost of a sample (seconds per frame for ViT-H on a GPU, far
    more on a CPU) while a Segformer pass is a fraction of it. Coarser starting polygons
    for the annotator, in exchange for draining a backlog (or running a CPU-only
    deployment, or measuring the rest of the pipeline) many times faster. Off by default.
    """

    def __init__(self, semantic, labels) -> None:
        self.semantic = semantic
        self.labels = labels

    def annotate(self, image):
        import numpy as np

        from sedna_sam.annotate.engine import PreAnnotation
        from sedna_sam.formats.ssa import ssa_document

        start = time.perf_counter()
        class_map = self.semantic.predict(image).astype(np.uint16)
        timings = {"semantic": time.perf_counter() - start}
        start = time.perf_counter()
        document = ssa_document(class_map, [], metadata={"pre_annotation": "semantic"})
        timings["rle"] = time.perf_counter() - start
        owner = np.full(class_map.shape, -1, dtype=np.int32)  # no masks
        return PreAnnotation(document, class_map, owner, timings)


@PRE_ANNOTATIONS.register("semantic")
def build_semantic_engine(config: ServiceConfig) -> SemanticOnly:
    """:class:`SemanticOnly` over ``semantic_model`` (``tiny_random_models``: the tiny
    random-weight Segformer; no SAM checkpoint is needed or loaded)."""
    from sedna_sam.annotate.semantic import make_semantic

    opts = config.pre_annotation
    semantic = opts.semantic_model
    if opts.tiny_random_models and not semantic:
        from sedna_sam.segformer import build_tiny_segformer

        log.warning("--tiny-random-models: RANDOM-weight Segformer, the pre-annotations mean nothing")
        semantic = tiny_models_dir(config) / "segformer_tiny_random"
        if not (semantic / "config.json").exists():
            build_tiny_segformer(semantic, config.labels)
    semantic = str(semantic or DEFAULT_SEMANTIC_MODEL)
    log.info("pre-annotation: semantic model %s alone (no SAM)", semantic)
    backend = opts.semantic_backend or "segformer"
    return SemanticOnly(make_semantic(backend, semantic, config.labels, opts.device), config.labels)


def pre_annotate(engine, config: ServiceConfig, layout: DatasetLayout, image: Path) -> None:
    """SSA JSON (+ overlay PNG) for ``image`` unless a valid one exists, then its Label
    Studio task. Both writes are atomic, so a rerun after a crash redoes at most one."""
    from sedna_sam.annotate.batch import annotate_file, is_done
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
    from sedna_sam.formats.labelstudio import task_from_class_map
    from sedna_sam.formats.ls_images import image_url

    task = task_from_class_map(
        class_map, labels, image_url(image), model_version=MODEL_VERSION, min_area_px=4.0
    )
    task["meta"] = {"sedna_sam": {"stem": image.stem, "source": "cloud serve"}}
    atomic_write_json(layout.ls_task(image.stem), task)
    return task


def image_task_key(image: str | Path) -> str | None:
    """The ``task_key`` of the task :func:`write_task` makes for ``image`` (how a push's
    lookup and the poll's stray search recognise it); None for an image outside Label
    Studio's document root, which no task of the service can show."""
    from sedna_sam.errors import InputError
    from sedna_sam.formats.ls_images import image_url, task_key

    try:
        return task_key({"data": {"image": image_url(image)}})
    except InputError:
        return None


def trainids_from_task(task: dict[str, Any], dataset_dir: Path, labels) -> Path:
    """Rasterize the newest non-cancelled annotation of one Label Studio task (as the API
    returns it: ``{"id", "data", "annotations": [...]}``) to ``train_ids/<stem>_TrainIds.png``."""
    from sedna_sam.convert import task_to_trainids
    from sedna_sam.errors import InputError
    from sedna_sam.formats.ls_export import parse_export

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

# The webhook the service registers and the one its /webhook accepts (cloud/server.py).
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
WEBHOOK_SECRET_HEADER = "X-Sedna-Sam-Secret"


class LabelStudioProject:
    """The one Label Studio project the service feeds, through C's
    :class:`~sedna_sam.labelstudio.api.LabelStudioClient` (retries, clear errors).

    Made once per process: finds (or creates) the project, connects a local-files storage
    over the dataset's raw_data/ so Label Studio can show the images, registers the
    webhook; a push looks for the image's task first when asked (see :meth:`push`).
    """

    def __init__(self, client, project_id: int, import_client=None) -> None:
        self.client = client
        self.project_id = int(project_id)
        # Imports are not idempotent: a retried POST whose first try reached Label Studio
        # makes a second task. They go through a client that never retries; a failed
        # import is the service's to retry, which looks for the task first.
        self.import_client = import_client or client

    def call(self, method: str, path: str, **kw) -> Any:
        return self.client.json(method, path, **kw)

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
            for hook in self.call("GET", "/api/webhooks/", params={"project": self.project_id}) or []:
                if hook.get("url") == url and hook.get("project") == self.project_id:
                    update = {k: v for k, v in body.items() if k != "project"}
                    self.call("PATCH", f"/api/webhooks/{hook['id']}/", json=update)
                    return True
            self.call("POST", "/api/webhooks/", json=body)
        except SednaSamError as exc:
            # The message may echo the request body's URL; it never holds the header values.
            log.warning(
                "Label Studio refused the webhook %s (%s); polling only. A private address needs "
                "Label Studio started with SSRF_PROTECTION_ENABLED=false",
                url,
                str(exc).split(":", 2)[-1][:200],
            )
            return False
        log.info("Label Studio posts annotation events to %s", url)
        return True

    def iter_tasks(self):
        """Every task of the project with its annotations (paged)."""
        return self.client.iter_tasks(self.project_id)

    def task(self, task_id: int) -> dict[str, Any]:
        return self.call("GET", f"/api/tasks/{int(task_id)}")

    def delete_task(self, task_id: int) -> None:
        """Delete a task (and its predictions); one already gone is no error."""
        from sedna_sam.labelstudio.api import LabelStudioError

        try:
            self.call("DELETE", f"/api/tasks/{int(task_id)}/")
        except LabelStudioError as exc:
            if exc.status != 404:
                raise

    def push(self, task: dict[str, Any], look_first: bool = False) -> int:
        """Import ``task``; returns its id. With ``look_first``, a task of the project that
        shows the same image (C's ``task_key``: the decoded local-files path) is returned
        instead, if there is one.

        The service looks first only when an earlier push of the sample may have created
        the task without recording it (the queue's ``push_started_at``), which is rare: so
        a push, or a replica's restart, never pages through every task of a big project."""
        from sedna_sam.errors import SednaSamError
        from sedna_sam.formats.ls_images import task_key

        key = task_key(task)
        if look_first:
            for existing in self.iter_tasks():
                if task_key(existing) == key:
                    log.info("Label Studio already has task %s for %s", existing["id"], key)
                    return int(existing["id"])
        ids = self.import_client.import_tasks(self.project_id, [task])
        if len(ids) != 1:
            raise SednaSamError(f"Label Studio import of {key} returned task ids {ids}, expected one")
        return int(ids[0])


def connect_label_studio(config: ServiceConfig) -> LabelStudioProject:
    from sedna_sam.errors import SednaSamError
    from sedna_sam.labelstudio.api import LabelStudioClient

    if not config.ls_url or not config.ls_token:
        raise SednaSamError("Label Studio is not configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    client = LabelStudioClient(config.ls_url, config.ls_token, timeout_s=60.0, retries=2)
    if str(config.project).isdigit():
        project = client.get_project(int(config.project))
    else:
        project = client.ensure_project(str(config.project), config.labels)
    import_client = LabelStudioClient(config.ls_url, config.ls_token, timeout_s=60.0, retries=0)
    ls = LabelStudioProject(client, project["id"], import_client)
    raw_data = Path(config.dataset_dir) / "raw_data"
    raw_data.mkdir(parents=True, exist_ok=True)
    client.ensure_local_storage(ls.project_id, raw_data)
    if config.webhook_url:
        if config.webhook_secret:
            ls.ensure_webhook(config.webhook_url, config.webhook_secret)
        else:
            log.warning("--webhook-url given but SEDNA_SAM_WEBHOOK_SECRET is unset: no webhook registered")
    return ls


def push_task(ls: LabelStudioProject, layout: DatasetLayout, image: Path, look_first: bool = False) -> int:
    """Push the task written for ``image`` (ls_data/<stem>_semantic_poly_ls.json);
    ``look_first``: return the project's task for that image if it has one."""
    import json

    task = json.loads(layout.ls_task(image.stem).read_text(encoding="utf-8"))
    return ls.push(task, look_first=look_first)


def write_trainids_from_task(
    ls: LabelStudioProject, labels, task_id: int, annotation_id, label: Path
) -> Path:
    """Fetch task ``task_id`` with its annotations and write its TrainIds PNG."""
    written = trainids_from_task(ls.task(task_id), label.parent.parent, labels)
    if written.resolve() != label.resolve():
        from sedna_sam.errors import SednaSamError

        raise SednaSamError(f"task {task_id} names image {written.name}, expected {label.name}")
    return written


def project_tasks(ls: LabelStudioProject) -> list:
    """Every task of the project, summarized (id, image key, newest submitted annotation:
    :class:`sedna_sam.cloud.strays.TaskSummary`), from one paged listing."""
    from sedna_sam.cloud.strays import summarize_task

    return [summarize_task(task) for task in ls.iter_tasks()]
