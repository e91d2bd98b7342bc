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
