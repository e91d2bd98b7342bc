"""Sedna's worker contract in one place: env names per role, the optional lib, plug-ins.

Sedna's global manager starts each LifelongLearningJob worker (train, eval, deploy =
inference) with env variables; container ``env`` entries of the job templates arrive
the same way. Every sedna-sam worker reads them through :func:`get_param`, which looks
a name up as given and then upper-cased, exactly like Sedna's
``Context.get_parameters`` (so ``unseen_save_url`` and ``UNSEEN_SAVE_URL`` both work).

Sedna's Python lib is optional: ``scripts/install-sedna-lib.sh`` installs it from the
kubeedge/sedna repository's ``lib/`` (release v0.7.0) in our images and in development
(``pip install sedna`` gets an unrelated package). :func:`sedna_lib` try-imports it; when
it is there and a Sedna job started the process (:func:`under_sedna`), the workers run
through it (:mod:`sedna_sam.sedna_job`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvVar:
    """One env name a worker reads: what it means, Sedna's default, whether it is secret."""

    name: str
    meaning: str
    default: str | None = None
    secret: bool = False


# Every name any sedna-sam role reads, with what it means (docs/architecture.md section 5; the
# defaults are those of kubeedge/sedna lib/sedna/common/config.py and
# core/lifelong_learning/knowledge_management/edge_knowledge_management.py).
ENV: dict[str, EnvVar] = {
    v.name: v
    for v in (
        # all Sedna workers
        EnvVar("NAMESPACE", "Kubernetes namespace of the job"),
        EnvVar("JOB_NAME", "LifelongLearningJob name", "sedna"),
        EnvVar("WORKER_NAME", "this worker's name (set by the global manager)"),
        EnvVar("LC_SERVER", "Sedna local controller URL", "http://127.0.0.1:9100"),
        EnvVar("KB_SERVER", "Sedna knowledge-base server URL"),
        EnvVar("DATA_PATH_PREFIX", "prefix of dataset paths inside the pod", "/home/data"),
        EnvVar("BACKEND_TYPE", "ML framework for Sedna's backend (PYTORCH for us)", "TENSORFLOW"),
        EnvVar("DEVICE_CATEGORY", "CPU or GPU", "CPU"),
        EnvVar("LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR", "INFO"),
        # read by Sedna's lib in every LifelongLearning (set by our templates or our defaults)
        EnvVar(
            "edge_output_url",
            "local knowledge-base directory of Sedna's lib (writable)",
            "<tmp>/sedna-sam-kb-<role>",
        ),
        EnvVar("MIN_TRAIN_SAMPLE", "Sedna trains a task only with this many samples (we set 1)", "10"),
        # object store (MinIO or any S3-compatible store), read by Sedna's FileOps and by us
        EnvVar("S3_ENDPOINT_URL", "S3-compatible endpoint URL for s3:// paths"),
        EnvVar("ACCESS_KEY_ID", "S3 access key (from a Secret)", secret=True),
        EnvVar("SECRET_ACCESS_KEY", "S3 secret key (from a Secret)", secret=True),
        # train
        EnvVar("TRAIN_DATASET_URL", "txt dataset index of the samples to train on"),
        EnvVar("ORIGINAL_DATASET_URL", "the Dataset CR's url (original index)"),
        EnvVar("OUTPUT_URL", "job output directory (models, knowledge base)", "/tmp"),
        EnvVar("HAS_COMPLETED_INITIAL_TRAINING", "'true' after the first training round", "false"),
        EnvVar("CLOUD_KB_INDEX", "knowledge-base index of the previous round"),
        # eval
        EnvVar("TEST_DATASET_URL", "txt dataset index of the evaluation samples"),
        # eval + inference
        EnvVar("MODEL_URLS", "model(s) to evaluate / deploy; deploy: <outputDir>/deploy/index.pkl"),
        # inference (template env of deploySpec; Sedna's lifelong examples read these)
        EnvVar("unseen_save_url", "directory where unseen (corner-case) samples are kept"),
        EnvVar("INFERENCE_RESULT_DIR", "directory for inference results", "./inference_results"),
        EnvVar("MODEL_POLL_PERIOD_SECONDS", "how often the deployed model is checked for changes", "30"),
        # ours, set by manifests/ (not Sedna names)
        EnvVar("SEDNA_SAM_STORE", "cloud store URL the shipper uploads flagged samples to"),
        EnvVar("NODE_NAME", "node name recorded in sample metadata (downward API spec.nodeName)"),
        EnvVar(
            "SEDNA_SAM_MODEL_CACHE",
            "where fetched and unpacked model archives are kept",
            "<tmp>/sedna-sam-models",
        ),
        # ours, train/eval workers (container env of trainSpec/evalSpec; see sedna_sam.lifelong)
        EnvVar("BASE_MODEL_URL", "Segformer to fine-tune in the first round (directory or hub id)"),
        EnvVar("REPLAY_DATASET_URL", "extra txt index(es) of earlier samples to replay"),
        EnvVar("TRAIN_STEPS", "optimizer steps per training round", "2000"),
        EnvVar("BATCH_SIZE", "images per training step", "8"),
        EnvVar("LEARNING_RATE", "peak learning rate", "6e-5"),
        EnvVar("REPLAY_RATIO", "share of each batch replayed from earlier samples", "0.5"),
        EnvVar("OLD_TEST_DATASET_URL", "old-domain test index (backward transfer)"),
        EnvVar("BASELINE_MODEL_URL", "deployed model a candidate must beat"),
        EnvVar("GATE_MIN_NEW_GAIN", "new-domain mIoU must rise by more than this", "0"),
        EnvVar("GATE_MAX_OLD_DROP", "old-domain mIoU may fall by at most this", "0.02"),
        EnvVar("DEPLOY_MODEL_DIR", "where an accepted model is published"),
    )
}

# What Sedna's global manager gives every worker (createPod); inference pods get no KB_SERVER
# (createInferPod): they read the KB server's URLs from the deployed index instead.
SEDNA_WORKER_ENV = ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "KB_SERVER")
SEDNA_INFERENCE_ENV = ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER")
LIB_ENV = ("edge_output_url", "MIN_TRAIN_SAMPLE", "SEDNA_SAM_MODEL_CACHE")
STORE_ENV = ("S3_ENDPOINT_URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class RoleEnv:
    """Env names a role reads: set by Sedna for its workers (``sedna``), needed to do the
    work (``required``, when run by Sedna), and used when given (``optional``)."""

    role: str
    sedna: tuple[str, ...]
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.sedna + self.required + self.optional

    @property
    def needed(self) -> tuple[str, ...]:
        """What a worker of this role cannot run without (KB_SERVER is optional: without
        it Sedna's lib only logs that the upload to the knowledge base failed)."""
        return tuple(n for n in self.sedna if n != "KB_SERVER") + self.required


ROLE_ENV: dict[str, RoleEnv] = {
    "inference": RoleEnv(
        "inference",
        SEDNA_INFERENCE_ENV,
        required=("MODEL_URLS",),
        optional=(
            *LIB_ENV,
            "OUTPUT_URL",
            "DATA_PATH_PREFIX",
            "unseen_save_url",
            "INFERENCE_RESULT_DIR",
            "MODEL_POLL_PERIOD_SECONDS",
            "SEDNA_SAM_STORE",
            "NODE_NAME",
            "BACKEND_TYPE",
            "DEVICE_CATEGORY",
            "LOG_LEVEL",
            *STORE_ENV,
        ),
    ),
    "train": RoleEnv(
        "train",
        SEDNA_WORKER_ENV,
        required=("TRAIN_DATASET_URL", "OUTPUT_URL"),
        optional=(
            *LIB_ENV,
            "ORIGINAL_DATASET_URL",
            "HAS_COMPLETED_INITIAL_TRAINING",
            "CLOUD_KB_INDEX",
            "TEST_DATASET_URL",
            "BASE_MODEL_URL",
            "REPLAY_DATASET_URL",
            "TRAIN_STEPS",
            "BATCH_SIZE",
            "LEARNING_RATE",
            "REPLAY_RATIO",
            "DATA_PATH_PREFIX",
            "BACKEND_TYPE",
            "DEVICE_CATEGORY",
            "LOG_LEVEL",
            *STORE_ENV,
        ),
    ),
    "eval": RoleEnv(
        "eval",
        SEDNA_WORKER_ENV,
        required=("MODEL_URLS", "TEST_DATASET_URL", "OUTPUT_URL"),
        optional=(
            *LIB_ENV,
            "ORIGINAL_DATASET_URL",
            "OLD_TEST_DATASET_URL",
            "BASELINE_MODEL_URL",
            "GATE_MIN_NEW_GAIN",
            "GATE_MAX_OLD_DROP",
            "DEPLOY_MODEL_DIR",
            "DATA_PATH_PREFIX",
            "BACKEND_TYPE",
            "DEVICE_CATEGORY",
            "LOG_LEVEL",
            *STORE_ENV,
        ),
    ),
}
ROLE_ENV["edge"] = ROLE_ENV["inference"]  # the name our CLI and doctor use for it


def get_param(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """Value of env ``name`` (as given, then upper-cased), else ``default``.

    Empty values count as unset, as in Sedna's ``Context.get_parameters``.
    """
    env = os.environ if env is None else env
    value = env.get(name) or env.get(name.upper())
    return value if value else default


def read_role_env(role: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The env values a role reads that are set (secrets included: never log this dict;
    log :func:`redacted` of it)."""
    spec = role_env(role)
    out = {}
    for name in spec.names:
        value = get_param(name, env=env)
        if value is not None:
            out[name] = value
    return out


def redacted(values: Mapping[str, str]) -> dict[str, str]:
    """A copy safe to log: secret values replaced by ``***``."""
    return {k: ("***" if ENV.get(k, EnvVar(k, "")).secret else v) for k, v in values.items()}


def missing_env(role: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Names a Sedna worker of this role needs and does not have (:attr:`RoleEnv.needed`)."""
    return [n for n in role_env(role).needed if get_param(n, env=env) is None]


def role_env(role: str) -> RoleEnv:
    try:
        return ROLE_ENV[role]
    except KeyError:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(sorted(ROLE_ENV))}") from None


def env_reference_markdown() -> str:
    """docs/configuration.md: every name in :data:`ENV` with its meaning, default, whether
    it is secret, and which worker roles read it (a test keeps the file equal to this)."""
    roles = [r for r in ROLE_ENV if r != "edge"]  # "edge" is another name for "inference"
    lines = [
        "# Configuration: the Sedna workers' environment",
        "",
        "Generated from `sedna_sam.sedna_compat.ENV` and `ROLE_ENV` (the one env contract of the",
        "train, eval and inference workers); `tests/test_architecture.py` keeps this file equal to",
        'it. Regenerate with `python -c "from sedna_sam.sedna_compat import env_reference_markdown as m;',
        "print(m(), end='')\" > docs/configuration.md`. Each name is looked up as written, then",
        "upper-cased (as Sedna's `Context.get_parameters` does); command-line flags override it.",
        "Roles: **S** set by Sedna's global manager, **R** required, **o** optional.",
        "",
        "| name | meaning | default | secret | " + " | ".join(roles) + " |",
        "|---|---|---|---|" + "---|" * len(roles),
    ]
    for var in ENV.values():
        marks = []
        for role in roles:
            spec = ROLE_ENV[role]
            mark = "S" if var.name in spec.sedna else "R" if var.name in spec.required else ""
            marks.append(mark or ("o" if var.name in spec.optional else ""))
        default = f"`{var.default}`" if var.default not in (None, "") else ""
        meaning = var.meaning.replace("|", "\\|")
        lines.append(
            f"| `{var.name}` | {meaning} | {default} | {'yes' if var.secret else ''} | "
            + " | ".join(marks)
            + " |"
        )
    return "\n".join(lines) + "\n"


def under_sedna(env: Mapping[str, str] | None = None) -> bool:
    """True when a Sedna job started this process (the global manager sets both)."""
    return bool(get_param("JOB_NAME", env=env) and get_param("WORKER_NAME", env=env))


def container_path(url: str, env: Mapping[str, str] | None = None) -> Path:
    """Where a host path URL is inside a Sedna worker pod. Sedna's global manager hands
    every URL over as DATA_PATH_PREFIX (/home/data) + host path, except CLOUD_KB_INDEX,
    which stays a host path: a path that is not there (nor its directory) is looked up
    under the prefix."""
    from sedna_sam.storage import local_path

    path = Path(local_path(url))
    if path.exists() or path.parent.is_dir() or not path.is_absolute():
        return path
    prefix = (get_param("DATA_PATH_PREFIX", "/home/data", env=env) or "").rstrip("/")
    return Path(prefix + str(path)) if prefix else path


def split_urls(value: str) -> list[str]:
    """Sedna's MODEL_URLS may name several models separated by ';' or ','."""
    return [part.strip() for part in value.replace(",", ";").split(";") if part.strip()]


def node_name(env: Mapping[str, str] | None = None) -> str:
    """Name of the node this worker runs on: NODE_NAME (downward API), else the host name
    (edge pods run with hostNetwork, so that is the node's)."""
    return get_param("NODE_NAME", env=env) or socket.gethostname() or "unknown-node"


def model_poll_seconds(env: Mapping[str, str] | None = None) -> float:
    """Sedna's MODEL_POLL_PERIOD_SECONDS (default 30); bad values fall back to 30 like Sedna."""
    raw = get_param("MODEL_POLL_PERIOD_SECONDS", "30", env=env)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except ValueError:
        value = 0
    if value < 1:
        log.warning("MODEL_POLL_PERIOD_SECONDS=%r is not a number >= 1; using 30", raw)
        return 30.0
    return value


# --- the optional lib -------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def sedna_lib() -> Any | None:
    """The kubeedge/sedna lib's ``sedna`` package, or None when it is not installed.

    A package named ``sedna`` without ``sedna.core.lifelong_learning`` (the unrelated
    PyPI one) counts as absent, with a warning. The lib counts as present only when
    ``sedna.core.lifelong_learning`` (what the Sedna path runs) and
    ``sedna.common.class_factory`` (where plug-ins register) import; that takes a while
    (the result is cached), and a lib whose requirements are missing counts as absent,
    with a warning.
    """
    try:
        module = importlib.import_module("sedna")
    except ImportError:
        return None
    except Exception as exc:  # the lib imports many things at import time; report, don't crash
        log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    try:
        importlib.import_module("sedna.core.lifelong_learning")
        importlib.import_module("sedna.common.class_factory")
    except ModuleNotFoundError as exc:
        if exc.name in ("sedna.core", "sedna.core.lifelong_learning", "sedna.common"):
            log.warning(
                "the package named `sedna` at %s is not KubeEdge Sedna's lib (no %s; PyPI's `sedna` "
                "is an unrelated project); running without it",
                getattr(module, "__file__", "?"),
                exc.name,
            )
        else:
            log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    except Exception as exc:  # e.g. a requirement of the lib missing or too new
        log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    return module


def sedna_lib_version() -> str | None:
    """Which kubeedge/sedna release is installed, or None when the lib is absent.

    The line ``scripts/install-sedna-lib.sh`` records in ``SEDNA_SAM_SOURCE_TAG`` next to
    the installed package (``"v0.7.0 sha256:..."``: tag, then source), since the lib's
    own version says 0.4.1 at v0.7.0; else ``"unknown (lib version X)"`` from
    ``sedna.__version__``. A ``sedna`` without ``core/lifelong_learning`` (the unrelated
    PyPI package) counts as absent. Reads files only, except for the fallback, which
    imports ``sedna``.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("sedna")
    except (ImportError, ValueError):  # a broken parent or a module without __spec__
        return None
    dirs = [
        d
        for d in (spec.submodule_search_locations or [] if spec else [])
        if os.path.isfile(os.path.join(d, "core", "lifelong_learning", "__init__.py"))
    ]
    if not dirs:
        return None
    try:
        with open(os.path.join(dirs[0], "SEDNA_SAM_SOURCE_TAG"), encoding="utf-8") as f:
            line = f.readline().strip()
    except OSError:
        line = ""
    if line:
        return line
    try:
        version = getattr(importlib.import_module("sedna"), "__version__", None)
    except Exception:  # the lib imports many things at import time
        version = None
    return f"unknown (lib version {version or '?'})"


def sedna_available() -> bool:
    return sedna_lib() is not None


def register_utd_plugin(alias: str, cls: type) -> bool:
    """Register ``cls`` with Sedna's ClassFactory as ``ClassType.UTD`` (unseen-sample
    recognition) under ``alias``; idempotent. False when the lib is absent.

    Sedna builds the plug-in as ``cls(task_index, estimator=..., **param)`` and calls it
    with a ``BaseDataSource``; it must return ``(seen_samples, unseen_samples)``.
    """
    if not sedna_available():
        return False
    from sedna.common.class_factory import ClassFactory, ClassType  # type: ignore[import-not-found]

    if not ClassFactory.is_exists(ClassType.UTD, alias):
        ClassFactory.register_cls(cls, ClassType.UTD, alias=alias)
        log.debug("registered Sedna UTD plug-in %s", alias)
    return True
