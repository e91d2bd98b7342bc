"""Our algorithms in Sedna's ``ClassFactory``, chosen by name in ``LifelongLearning``.

Sedna's defaults do not fit segmentation on image paths: its task definition wants a
pandas DataFrame, its default update decision is registered by nothing, and its default
re-recognition splits the training samples in half. Ours:

==========================  ==========================================================
``SednaSamSingleTask``      task definition: one task (one Segformer) for all samples;
                            the entry name is unique per round, because the KB server
                            stores uploads by file name (``<entry>.model``) and a
                            constant name would let round 2 overwrite round 1's model
                            under the URL that round 1's (deployed) index points at
``SednaSamSingleTaskAlloc`` task allocation: every frame to that one task
``SednaSamFinetune``        update decision (rounds after the first): fine-tune the
                            previous round's model on the new samples, with the
                            knowledge it was trained on replayed (kept in its archive)
``SednaSamAllSeen``         re-recognition of labelled samples: all of them are "seen"
``sedna_sam``, ...          unseen-sample recognition at the edge: the deployed model's
``sedna_sam_<scorer>``      calibrated scorer, or a named one (msp, entropy, energy,
                            lowconf)
==========================  ==========================================================
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from typing import Any

from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

TASK_DEFINITION = "SednaSamSingleTask"
TASK_ALLOCATION = "SednaSamSingleTaskAlloc"
UPDATE_DECISION = "SednaSamFinetune"
RE_RECOGNITION = "SednaSamAllSeen"
CALIBRATED_RECOGNITION = "sedna_sam"  # the deployed model's own (calibrated) scorer
TASK_PREFIX = "segformer"


def new_task_entry(prefix: str = TASK_PREFIX) -> str:
    """A task name unique to this round (UTC time + random), e.g. segformer-20261130T1204-3fa2c1."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def utd_alias(scorer_name: str) -> str:
    return f"sedna_sam_{scorer_name}"


class SingleTaskDefinition:
    """All samples are one task. Sedna calls it as ``cls(**param)(samples, model=...)`` and
    wants ``(tasks, task extractor, samples)``; the extractor maps task entry -> model index."""

    def __init__(self, **kwargs: Any) -> None:
        self.prefix = str(kwargs.get("prefix") or TASK_PREFIX)

    def __call__(self, samples: Any, **kwargs: Any) -> tuple[list[Any], dict[str, int], Any]:
        from sedna.algorithms.seen_task_learning.artifact import Task  # type: ignore[import-not-found]

        entry = new_task_entry(self.prefix)
        return [Task(entry=entry, samples=samples, meta_attr=entry)], {entry: 0}, samples


class SingleTaskAllocation:
    """Every inference sample goes to task 0 (the one model)."""

    def __init__(self, task_extractor: Any = None, **kwargs: Any) -> None:
        self.task_extractor = task_extractor

    def __call__(self, samples: Any) -> tuple[Any, list[int]]:
        return samples, [0] * len(samples.x)


class AllSeenReRecognition:
    """Labelled training samples are all "seen": the one task learns them all."""

    def __init__(self, task_index: Any = None, **kwargs: Any) -> None:
        pass

    def __call__(self, samples: Any) -> tuple[Any, Any]:
        from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

        unseen = BaseDataSource(data_type=samples.data_type)
        # the lib concatenates seen and unseen again: empty slices keep dtype and shape
        unseen.x = samples.x[:0]
        unseen.y = samples.y[:0] if samples.y is not None else None
        return samples, unseen


class FinetuneUpdateDecision:
    """Later rounds: fine-tune the previous round's model on the new samples.

    Sedna calls it as ``cls(index_url, **param)(samples, task_type=...)`` and wants
    ``(tasks, strategies)``; it then loads ``task.model`` into the estimator, trains it on
    ``task.samples`` and saves it as ``<task.entry>.model``. The previous model is staged
    into a private directory first (see :func:`sedna_sam.sedna_job.kb.stage_model`).
    """

    def __init__(self, task_index: Any, **kwargs: Any) -> None:
        from sedna_sam.sedna_job import kb

        self.index = kb.load_index(task_index) if isinstance(task_index, str) else task_index
        self.prefix = str(kwargs.get("prefix") or TASK_PREFIX)

    def __call__(self, samples: Any, task_type: str = "seen_task") -> tuple[list[Any], dict[str, dict]]:
        from sedna.algorithms.seen_task_learning.artifact import Task  # type: ignore[import-not-found]

        from sedna_sam.sedna_job import kb

        if task_type != "seen_task":
            return [], {}  # we keep no unseen tasks: labelled corner cases are learned by the one model
        groups = kb.seen_groups(self.index)
        if not groups:
            raise SednaSamError(
                "the previous round's knowledge base has no model to fine-tune (no seen task group)"
            )
        staged = kb.stage_model(kb.model_urls_of_group(groups[0]), tempfile.mkdtemp(prefix="sedna-sam-prev-"))
        entry = new_task_entry(self.prefix)
        task = Task(entry=entry, samples=samples, meta_attr=entry)
        task.model = str(staged)
        log.info(
            "update decision: fine-tune %s (previous task %s) on %d samples",
            entry,
            groups[0].entry,
            len(samples.x),
        )
        strategy = {"raw_data_update": samples, "target_model_update": True, "task_attr_update": None}
        return [task], {entry: strategy}


def make_recognition_plugin(scorer_name: str | None) -> type:
    """A Sedna unseen-sample recognition class that scores frames with our scorer
    (``None``: the deployed model's own, as calibrated by ``sedna-sam edge calibrate``).

    Sedna builds it as ``cls(task_index, estimator=<our edge estimator>, **param)`` and
    calls it with a data source of frames; it returns ``(seen, unseen)`` data sources.
    The estimator computes each frame's logits once: the prediction reuses them, and the
    score of each frame is left with the estimator for the sample's metadata.
    ``threshold`` None: the model's calibrated threshold.
    """
    from sedna_sam.edge.scorers import SCORERS

    if scorer_name is not None:
        SCORERS.get(scorer_name)  # unknown names fail here, with the list of known ones
    alias = utd_alias(scorer_name) if scorer_name else CALIBRATED_RECOGNITION

    class CornerCaseRecognition:
        def __init__(
            self, task_index: Any = None, estimator: Any = None, threshold: float | None = None, **params: Any
        ):
            if estimator is None or not hasattr(estimator, "frame_logits"):
                raise SednaSamError(
                    f"{alias} needs sedna-sam's edge estimator (it scores the model's logits)"
                )
            self.task_index = task_index
            self.estimator = estimator
            self.threshold = threshold
            self.params = params
            self.scores: dict[str, float] = {}  # frame key -> score of the last call

        def scorer(self):
            return self.estimator.scorer(scorer_name, self.threshold, self.params)

        def __call__(self, samples: Any, **kwargs: Any) -> tuple[Any, Any]:
            from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

            self.estimator.ensure_model(self.task_index)
            scorer = self.scorer()
            seen = BaseDataSource(data_type=samples.data_type)
            unseen = BaseDataSource(data_type=samples.data_type)
            seen.x, unseen.x = [], []
            self.scores = {}
            for x in samples.x:
                logits = self.estimator.frame_logits(x)
                score = scorer.score(logits[0])
                self.scores[self.estimator.frame_key(x)] = score
                self.estimator.scores[self.estimator.frame_key(x)] = score
                (unseen.x if scorer.flags(score) else seen.x).append(x)
            return seen, unseen

    CornerCaseRecognition.__name__ = f"SednaSam{(scorer_name or 'Calibrated').capitalize()}Recognition"
    CornerCaseRecognition.__qualname__ = CornerCaseRecognition.__name__
    return CornerCaseRecognition


def register_all() -> list[str]:
    """Register every plug-in (idempotent); returns the names registered now."""
    from sedna.common.class_factory import ClassFactory, ClassType  # type: ignore[import-not-found]

    from sedna_sam.edge.scorers import SCORERS

    entries: list[tuple[str, str, Any]] = [
        (ClassType.STP, TASK_DEFINITION, SingleTaskDefinition),
        (ClassType.STP, TASK_ALLOCATION, SingleTaskAllocation),
        (ClassType.KM, UPDATE_DECISION, FinetuneUpdateDecision),
        (ClassType.UTD, RE_RECOGNITION, AllSeenReRecognition),
    ]
    entries.append((ClassType.UTD, CALIBRATED_RECOGNITION, make_recognition_plugin(None)))
    entries += [(ClassType.UTD, utd_alias(name), make_recognition_plugin(name)) for name in SCORERS.names()]
    added = []
    for kind, alias, cls in entries:
        if not ClassFactory.is_exists(kind, alias):
            ClassFactory.register_cls(cls, kind, alias=alias)
            added.append(alias)
    if added:
        log.debug("registered Sedna plug-ins: %s", ", ".join(added))
    return added
