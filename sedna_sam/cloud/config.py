"""What ``cloud serve`` is told: the service's settings and how it pre-annotates.

The CLI builds both from flags and env (:mod:`sedna_sam.commands.cloud`); tests and
benches build them directly. Nothing here loads a model or opens a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sedna_sam.annotate.sam import SamParams
from sedna_sam.cloud.queue_store import DEFAULT_LEASE_S
from sedna_sam.labels import LabelSet


@dataclass(frozen=True)
class PreAnnotationOptions:
    """Which models pre-annotate a sample, as given (``cloud serve``'s pre-annotation flags).

    They are resolved when the first sample needs the engine
    (:func:`sedna_sam.cloud.adapters.build_engine`): for ``kind="sam"`` into the
    :class:`~sedna_sam.annotate.engine.AnnotateOptions` that ``annotate`` builds its
    engine from, so the service starts (and ``/healthz`` answers) without loading SAM.
    """

    # "sam": SAM masks labelled by semantic voting; "semantic": the semantic model's class
    # map alone (coarser polygons at a fraction of the cost)
    kind: str = "sam"
    sam_checkpoint: str | None = None  # None: the models directory's vit_h checkpoint
    sam_model: str | None = None  # vit_h, vit_l, vit_b (None: from the checkpoint)
    semantic_model: str | None = None  # directory or hub id (None: SSA's Cityscapes Segformer)
    semantic_backend: str = "segformer"
    device: str | None = None  # None: CUDA when present
    models_dir: str = "."  # where `sedna-sam models download` put the SAM checkpoints
    # tiny random-weight SAM and Segformer, built under <dataset>/.tiny-models (demos, tests)
    tiny_random_models: bool = False
    sam: SamParams | None = None  # None: SSA's parameters (the tiny models' own with those)


@dataclass
class ServiceConfig:
    """Everything the service needs. Secrets are kept out of ``repr``."""

    store: str  # URL or path of the store the edge shipper writes to
    dataset_dir: Path  # raw_data/, ssa_output/, ls_data/, train_ids/ live here
    index_path: Path  # the Sedna Dataset's txt index
    queue_url: str  # sqlite:///... (default: <dataset_dir>/cloud-queue.sqlite)
    labels: LabelSet
    ls_url: str = ""
    ls_token: str = field(default="", repr=False)
    project: str = "sedna-sam"  # Label Studio project id or title
    webhook_secret: str = field(default="", repr=False)
    webhook_url: str = ""  # where Label Studio should POST annotations; registered if set
    pre_annotation: PreAnnotationOptions = field(default_factory=PreAnnotationOptions)
    batch: int = 8  # samples per stage per step
    poll_interval_s: float = 30.0
    max_attempts: int = 5
    backoff_s: float = 10.0
    job_output_dir: str = ""  # the LifelongLearningJob's outputDir: its rounds go to /metrics
    replica_id: str = ""  # this replica's name in leases (default: $SEDNA_SAM_REPLICA_ID or the host name)
    lease_s: float = DEFAULT_LEASE_S  # how long a claimed sample stays this replica's
    # How long after a push that was cut short (replica killed, request timed out) Label
    # Studio may still create that task: the next push of the sample waits this long, then
    # looks for the task before creating one. Above the Label Studio request timeout (60 s).
    push_settle_s: float = 120.0
