"""A sample's second Label Studio task (a *stray*): how the poll finds and settles it.

Why a stray can exist at all: a push cut short after Label Studio received the import (its
replica was killed, its request timed out) may still create that task later, because Label
Studio finishes a request whose client has gone. The next push of the sample waits
``push_settle_s`` and then looks for the task; but under load (Label Studio's SQLite
writes queued behind others, a busy machine) the late task can commit after that look, and
the sample ends up with two. No client-side wait can rule this out, so the service mends
it afterwards: the queue keeps the task id stored first (the sample's *own* task) and the
poll, which pages through the project's tasks anyway, settles the others.

Per sample whose own task is known, among the project's tasks that show its image (the
same ``task_key`` a push looks up):

- the own task is kept while it is in the project and either annotated or the only
  annotated one's rival is not (a person's work is never deleted);
- otherwise the sample *adopts* a stray: the annotated one (lowest id), else, when its own
  task is gone from the project (deleted by a person), the lowest id;
- strays without a submitted annotation are deleted; annotated ones that are not kept are
  left in place and reported (a person chooses; ingestion follows the kept task).

:func:`plan_strays` decides from a listing (pure); :func:`settle` carries a plan out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sedna_sam.cloud.samples import Sample
    from sedna_sam.cloud.service import AnnotationService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSummary:
    """What the poll keeps of one task of the listing: its id, its image's
    :func:`~sedna_sam.formats.ls_images.task_key` and its newest submitted annotation as
    ``(annotation id, updated_at)`` (None: not annotated)."""

    task_id: int
    key: str
    newest: tuple[int, str | None] | None


def summarize_task(task: dict[str, Any]) -> TaskSummary:
    """A task as Label Studio's task listing returns it -> :class:`TaskSummary`."""
    from sedna_sam.formats.ls_export import latest_annotation
    from sedna_sam.formats.ls_images import task_key

    newest = latest_annotation(task.get("annotations"))
    annotation = None if newest is None else (int(newest["id"]), newest.get("updated_at"))
    return TaskSummary(int(task["id"]), task_key(task), annotation)


@dataclass(frozen=True)
class StrayPlan:
    """What to do for one sample that has more than one task (or lost its own)."""

    sample_id: str
    own_task_id: int  # the task id the queue holds now
    keep: TaskSummary  # the task the sample ends up with
    delete: list[int] = field(default_factory=list)  # unannotated strays
    conflicts: list[int] = field(default_factory=list)  # annotated strays left for a person

    @property
    def adopts(self) -> bool:
        return self.keep.task_id != self.own_task_id


def plan_strays(
    tasks: Iterable[TaskSummary], samples: Iterable[Sample], image_key: Callable[[str], str | None]
) -> list[StrayPlan]:
    """Plans for the samples of ``samples`` with a stored task id whose image shows in
    more than one of ``tasks``, or in some but not in its own; ``image_key(image_path)``
    is the key of the task made for that image (None: none can show it). ``samples`` must
    be read before the listing was made: a task stored after it may be missing from it."""
    own: dict[str, Sample] = {}
    for s in samples:
        key = image_key(s.image_path) if s.ls_task_id is not None and s.image_path else None
        if key is not None:
            own[key] = s
    by_key: dict[str, list[TaskSummary]] = {}
    for t in tasks:
        if t.key in own:
            by_key.setdefault(t.key, []).append(t)
    plans = []
    for key, found in sorted(by_key.items()):
        sample = own[key]
        mine = [t for t in found if t.task_id == sample.ls_task_id]
        others = sorted((t for t in found if t.task_id != sample.ls_task_id), key=lambda t: t.task_id)
        if not others:
            continue
        annotated = [t for t in others if t.newest is not None]
        if mine and (mine[0].newest is not None or not annotated):
            keep = mine[0]
        else:
            keep = annotated[0] if annotated else others[0]
        rest = [t for t in others if t is not keep]
        if mine and keep is not mine[0]:
            rest.append(mine[0])  # unannotated here: an annotated own task is always kept
        plans.append(
            StrayPlan(
                sample.sample_id,
                int(sample.ls_task_id),
                keep,
                delete=sorted(t.task_id for t in rest if t.newest is None),
                conflicts=sorted(t.task_id for t in rest if t.newest is not None),
            )
        )
    return plans


def settle(service: AnnotationService, plan: StrayPlan) -> None:
    """Carry ``plan`` out: adopt (compare-and-set on the stored task id, so a poll racing
    another change does nothing), delete the unannotated strays, report conflicts."""
    if plan.adopts:
        if not service.queue.move_task(plan.sample_id, plan.own_task_id, plan.keep.task_id):
            log.info("%s: its task changed meanwhile; strays left for the next poll", plan.sample_id)
            return
        log.warning(
            "%s: now Label Studio task %d (%s) instead of %d",
            plan.sample_id,
            plan.keep.task_id,
            "a person annotated it" if plan.keep.newest else "its own task is gone from the project",
            plan.own_task_id,
        )
        service.metrics.duplicate_task("adopted")
        if plan.keep.newest is not None:
            service.annotation_event(plan.keep.task_id, *plan.keep.newest)
    for task_id in plan.delete:
        service.ls.delete_task(task_id)
        log.warning(
            "%s: deleted Label Studio task %d, an unannotated second task of the sample (its task "
            "is %d); a push cut short was completed by Label Studio after the next push looked",
            plan.sample_id,
            task_id,
            plan.keep.task_id,
        )
        service.metrics.duplicate_task("deleted")
    for task_id in plan.conflicts:
        if (plan.sample_id, task_id) in service.reported_conflicts:
            continue  # once per process, not at every poll
        service.reported_conflicts.add((plan.sample_id, task_id))
        log.error(
            "%s: Label Studio tasks %d and %d show the same image and both are annotated; "
            "task %d is ingested. Delete the other in Label Studio once you have compared them",
            plan.sample_id,
            plan.keep.task_id,
            task_id,
            plan.keep.task_id,
        )
        service.metrics.duplicate_task("conflict")
