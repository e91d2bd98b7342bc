"""What the train and eval workers share: flag-or-env lookups, numbers from env, whether
to run under Sedna's lib, and the upload of a round's outputs to a remote OUTPUT_URL.

Each option a worker leaves ``None`` is read from the env name Sedna (or our manifests) give
the worker (listed in :data:`sedna_sam.sedna_compat.ROLE_ENV`). With kubeedge/sedna's lib
installed and a LifelongLearningJob as the parent, the workers
(:mod:`sedna_sam.lifelong.train_worker`, :mod:`sedna_sam.lifelong.eval_worker`) hand over to
:mod:`sedna_sam.lifelong.sedna_worker`; otherwise they do the same work themselves (a local
run, or a cluster without the lib).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sedna_sam import sedna_compat
from sedna_sam.errors import SednaSamError
from sedna_sam.sedna_lib import sedna_available
from sedna_sam.storage import is_local_url

log = logging.getLogger(__name__)


def env_float(name: str, value: str | float | None, default: float) -> float:
    """``value`` (a flag or the env value of ``name``) as a number; ``default`` when unset."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SednaSamError(f"{name}={value!r} is not a number") from None


class FromEnv:
    """Flag value if given, else the env name's value (Sedna's Context lookup), else default."""

    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = env

    def __call__(self, given: Any, name: str, default: Any = None) -> Any:
        return sedna_compat.given_or_param(given, name, default, self.env)


def is_remote(url: str) -> bool:
    """Not a plain path or ``file://`` URL (an S3 or HTTP output)."""
    return not is_local_url(url)


def use_sedna_lib(disabled: bool, env: Mapping[str, str] | None = None) -> bool:
    """Run under Sedna's lib: it is installed, a Sedna job started us, and not --no-sedna."""
    if disabled or not sedna_compat.under_sedna(env):
        return False
    if sedna_available():
        return True
    log.warning(
        "started by a Sedna job but kubeedge/sedna's lib is not installed: running without it "
        "(no knowledge base, no report to the local controller; the job will not advance)"
    )
    return False


def upload_outputs(work_dir: Path, output: str) -> None:
    """Copy a round's local results to a remote OUTPUT_URL (s3://...); no-op when local."""
    if not is_remote(output):
        return
    from sedna_sam.storage import url_filesystem

    fs, path = url_filesystem(output)
    for p in sorted(work_dir.rglob("*")):
        if p.is_file() and "checkpoints" not in p.relative_to(work_dir).parts:
            fs.put(str(p), f"{path.rstrip('/')}/{p.relative_to(work_dir).as_posix()}")
    log.info("round outputs uploaded to %s", output)
