"""What the annotation queue holds: the states a flagged sample goes through, and one row.

States, in order (``failed`` is off to the side)::

    received -> pre_annotated -> in_label_studio -> labelled -> ingested
         \\____________\\________________\\______________\\____> failed

- ``received``: the sample's JSON and image were read from the store, the image checked
  (size, sha256) and copied into the dataset's raw_data/.
- ``pre_annotated``: SSA JSON and the Label Studio task JSON exist under the dataset.
- ``in_label_studio``: the task exists in Label Studio; its id is stored here.
- ``labelled``: a person submitted (or updated) an annotation; its id and time are stored.
- ``ingested``: TrainIds PNG written and the ``<image> <label>`` line is in the index.

The transitions between them, each a compare-and-set, are :class:`sedna_sam.cloud.queue.Queue`'s.
This module needs no database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RECEIVED = "received"
PRE_ANNOTATED = "pre_annotated"
IN_LABEL_STUDIO = "in_label_studio"
LABELLED = "labelled"
INGESTED = "ingested"
FAILED = "failed"

# The happy path, in order; ``failed`` is reachable from any state before ``ingested``.
STATES = (RECEIVED, PRE_ANNOTATED, IN_LABEL_STUDIO, LABELLED, INGESTED)
ALL_STATES = STATES + (FAILED,)

# The columns of the ``samples`` table, in the order of :class:`Sample`'s fields.
COLUMNS = (
    "sample_id",
    "node",
    "state",
    "image_path",
    "source",
    "meta",
    "ls_task_id",
    "annotation_id",
    "annotation_at",
    "ingested_annotation_at",
    "attempts",
    "last_error",
    "failed_from",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "lease_owner",
    "lease_until",
    "push_started_at",
)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM samples"
UNLEASE = "lease_owner = NULL, lease_until = 0"  # a transition ends the claim


@dataclass(frozen=True)
class Sample:
    """One queue row. ``meta`` is the shipper's JSON (score, scorer, node, frame_time, ...).

    ``lease_owner``/``lease_until``: the replica working on it and until when (epoch
    seconds; 0 = nobody). ``push_started_at``: when a replica last started creating its
    Label Studio task (None: never), so a later push knows to look for a task first.
    """

    sample_id: str
    node: str
    state: str
    image_path: str
    source: str
    meta: dict[str, Any]
    ls_task_id: int | None
    annotation_id: int | None
    annotation_at: str | None
    ingested_annotation_at: str | None
    attempts: int
    last_error: str | None
    failed_from: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_until: float = 0.0
    push_started_at: float | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Sample:
        values = dict(zip(COLUMNS, row))
        values["meta"] = json.loads(values["meta"] or "{}")
        return cls(**values)
