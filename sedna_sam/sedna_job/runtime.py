"""What every worker needs from Sedna's lib: env defaults, a scratch directory, the
``LifelongLearning`` object with our plug-ins, reports to the local controller, a clean exit.

The defaults fix what the lib assumes and Sedna does not provide:

- ``BACKEND_TYPE``: unset means TensorFlow (an import error here); ``TORCH`` selects a
  backend whose ``train`` does nothing. Anything the lib does not know falls back to its
  plain backend, which calls our estimator's methods: we need ``PYTORCH``.
- ``edge_output_url``: every ``LifelongLearning`` builds an edge knowledge manager that
  creates ``<edge_output_url>/unseen_samples`` at once; its default ``/var/lib/sedna/kb``
  cannot be created by a non-root pod.
- ``MIN_TRAIN_SAMPLE``: below 10 samples (the lib's default) the lib trains a "global"
  model instead of the task's; one task is all we have, so 1.
- The lib keeps its working copy of the KB index as ``index.pkl`` in the current
  directory: :func:`lib_workspace` runs it in a private scratch directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sedna_sam.errors import SednaSamError
from sedna_sam.sedna_lib import sedna_available

log = logging.getLogger(__name__)

REQUIRED_BACKEND = "PYTORCH"
# What the lib's knowledge management and report code call the LifelongLearningJob kind
# (sedna.common.constant.K8sResourceKind.LIFELONG_JOB), matched by the local controller.
LC_OWNER_KIND = "lifelonglearningjob"


def require_lib() -> None:
    if not sedna_available():
        raise SednaSamError(
            "kubeedge/sedna's lib is not installed (scripts/install-sedna-lib.sh installs it; "
            "the PyPI package named 'sedna' is unrelated)"
        )


def prepare_env(role: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Set the env defaults the lib needs (see the module doc) in ``env`` (default
    ``os.environ``, which the lib reads); returns what was set, for the log.

    Raises :class:`SednaSamError` for a BACKEND_TYPE that would make the lib skip or
    break training, and when ``edge_output_url`` cannot be created.
    """
    env = os.environ if env is None else env
    # The lib warns "PYTORCH Not Support yet, use itself" at every backend it builds: that is
    # exactly the plain backend we want (see the module doc), not something to act on.
    warnings.filterwarnings("ignore", message=r".*Not Support yet, use itself")
    changed: dict[str, str] = {}
    backend = (env.get("BACKEND_TYPE") or "").strip()
    if not backend:
        env["BACKEND_TYPE"] = changed["BACKEND_TYPE"] = REQUIRED_BACKEND
    elif backend.upper() != REQUIRED_BACKEND:
        raise SednaSamError(
            f"BACKEND_TYPE={backend}: Sedna's lib would "
            + (
                "use its TorchBackend, whose train() does nothing"
                if backend.upper() == "TORCH"
                else f"load its {backend} backend"
            )
            + f"; set BACKEND_TYPE={REQUIRED_BACKEND} in the job template"
        )
    if not (env.get("edge_output_url") or env.get("EDGE_OUTPUT_URL")):
        env["edge_output_url"] = changed["edge_output_url"] = os.path.join(
            tempfile.gettempdir(), f"sedna-sam-kb-{role}"
        )
    kb_dir = Path(env.get("edge_output_url") or env["EDGE_OUTPUT_URL"])
    try:
        (kb_dir / "unseen_samples").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SednaSamError(
            f"edge_output_url={kb_dir}: cannot create it ({exc.strerror}); Sedna's lib keeps its local "
            "knowledge base there: point it at a writable volume (our manifests use <edge data root>/kb, "
            "made writable by the `sedna-sam init-dirs` init container)"
        ) from None
    if not env.get("MIN_TRAIN_SAMPLE"):
        env["MIN_TRAIN_SAMPLE"] = changed["MIN_TRAIN_SAMPLE"] = "1"
    if changed:
        log.info("env for Sedna's lib (%s): %s", role, ", ".join(f"{k}={v}" for k, v in changed.items()))
    return changed


@contextlib.contextmanager
def lib_workspace() -> Iterator[Path]:
    """Run the lib in a private scratch directory (it writes ``index.pkl`` to the current
    directory, and two rounds must not share it); removed afterwards."""
    old = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="sedna-lib-"))
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(old)
        shutil.rmtree(scratch, ignore_errors=True)


def lifelong_learning(
    seen_estimator: Any, unseen_estimator: Any = None, recognition: dict | None = None
) -> Any:
    """Sedna's ``LifelongLearning`` with our algorithms (see :mod:`.plugins`)."""
    require_lib()
    from sedna.core.lifelong_learning import LifelongLearning  # type: ignore[import-not-found]

    from sedna_sam.sedna_job import plugins

    plugins.register_all()
    return LifelongLearning(
        seen_estimator=seen_estimator,
        unseen_estimator=unseen_estimator,
        task_definition={"method": plugins.TASK_DEFINITION},
        task_allocation={"method": plugins.TASK_ALLOCATION},
        task_update_decision={"method": plugins.UPDATE_DECISION},
        unseen_sample_re_recognition={"method": plugins.RE_RECOGNITION},
        unseen_sample_recognition=recognition,
    )


def data_relpath(path: str | Path) -> str:
    """A container path as Sedna reports it: without DATA_PATH_PREFIX (/home/data), which the
    global manager adds back when it hands the URL to the next worker."""
    from sedna.common.config import BaseConfig  # type: ignore[import-not-found]
    from sedna.common.file_ops import FileOps  # type: ignore[import-not-found]

    return FileOps.remove_path_prefix(str(path), BaseConfig.data_path_prefix)


def report(ll: Any, status: str, results: list[dict] | None = None, kind: str = "train") -> bool:
    """Send a worker report to the local controller, shaped as the lib's own reports
    (``JobBase.report_task_info``), and say whether the local controller took it.

    ``results`` None or empty: no model (the local controller then deploys nothing).
    """
    from sedna.service.client import LCClient  # type: ignore[import-not-found]

    message: dict[str, Any] = {
        "name": ll.worker_name,
        "namespace": ll.namespace,
        "ownerName": ll.job_name,
        "ownerKind": ll.job_kind,
        "kind": kind,
        "status": status,
    }
    if results:
        message["results"] = results
    answer = LCClient.send(ll.lc_server, ll.worker_name, message)
    if answer is None:
        log.error(
            "the local controller at %s did not take the %s report (%s); the job will not advance "
            "until this worker runs again",
            ll.lc_server,
            kind,
            status,
        )
        return False
    log.info("reported %s %s to the local controller at %s", kind, status, ll.lc_server)
    return True


def hard_exit(code: int) -> None:
    """End the process now. The lib's inference threads (unseen-sample detection, model
    hot update, the file observer) are not daemons and never end by themselves, so after
    our own cleanup a normal interpreter exit would hang until Kubernetes kills the pod."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
