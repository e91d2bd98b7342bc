"""Every env variable sedna-sam reads (the Sedna workers' contract and our own processes'
settings), and the Sedna job helpers built on it.

Sedna's global manager starts each LifelongLearningJob worker (train, eval, deploy =
inference) with env variables; container ``env`` entries of the job templates arrive
the same way. Every sedna-sam worker reads them through :func:`get_param`, which looks
a name up as given and then upper-cased, exactly like Sedna's
``Context.get_parameters`` (so ``unseen_save_url`` and ``UNSEEN_SAVE_URL`` both work).

Whether Sedna's optional Python lib is installed is :mod:`sedna_sam.sedna_lib`'s business;
when it is and a Sedna job started the process (:func:`under_sedna`), the workers run
through it (:mod:`sedna_sam.sedna_job`).
"""

from __future__ import annotations

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


# Every env name sedna-sam's code reads, with what it means: the Sedna workers' contract
# (docs/architecture.md section 5; Sedna's defaults are those of kubeedge/sedna
# lib/sedna/common/config.py and
# core/lifelong_learning/knowledge_management/edge_knowledge_management.py) and the settings
# of our own processes (annotate, the cloud service, Label Studio and its ML backend).
# tests/test_architecture.py fails on a name read anywhere in sedna_sam/ that is not here.
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
            "local knowledge-base directory of Sedna's lib (writable; our manifests: <edgeDataRoot>/kb)",
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
        EnvVar(
            "MODEL_URLS",
            "model(s) to evaluate / deploy: a Segformer directory, a file in it, a one-file model archive "
            "or a KB index.pkl (deploy: <outputDir>/deploy/index.pkl)",
        ),
        # inference (template env of deploySpec; Sedna's lifelong examples read these)
        EnvVar(
            "unseen_save_url",
            "sample buffer: where unseen (corner-case) frames wait for the shipper",
            "./unseen_samples",
        ),
        EnvVar("INFERENCE_RESULT_DIR", "directory for inference results", "./inference_results"),
        EnvVar(
            "MODEL_POLL_PERIOD_SECONDS",
            "how often the deployed model is checked for changes (hot reload)",
            "30",
        ),
        # ours, set by manifests/ (not Sedna names)
        EnvVar(
            "SEDNA_SAM_STORE",
            "store of flagged samples (directory, file://, s3://): the shipper uploads, the cloud service reads",
        ),
        EnvVar(
            "NODE_NAME",
            "node name in store paths and sample metadata (downward API spec.nodeName)",
            "the host name",
        ),
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
        # ours, pre-annotation (`sedna-sam annotate`, the backfill Indexed Job, the cloud service)
        EnvVar(
            "JOB_COMPLETION_INDEX", "this pod's shard (set by Kubernetes in an Indexed Job; --shard-index)"
        ),
        EnvVar("SEDNA_SAM_SHARD_COUNT", "number of shards: the Indexed Job's completions (--shard-count)"),
        EnvVar(
            "SEDNA_SAM_MAX_IMAGE_PIXELS",
            "largest image decoded, in pixels (bigger ones are refused)",
            "50000000",
        ),
        EnvVar(
            "SEDNA_SAM_CLIP_MODEL",
            "CLIP of the clip labelers when no clip_model option is given (directory or hub id)",
            "openai/clip-vit-base-patch32",
        ),
        EnvVar("HF_HUB_OFFLINE", "'1': Hugging Face models (Segformer, CLIP) from the local cache only"),
        EnvVar(
            "TORCHINDUCTOR_CACHE_DIR",
            "torch.compile's cache of the compiled SAM decoder (--sam-backend compiled)",
            "<SEDNA_SAM_MODEL_CACHE>/inductor",
        ),
        # ours, the cloud annotation service (`sedna-sam cloud serve|status|retry`; flags win)
        EnvVar(
            "SEDNA_SAM_DATASET_DIR", "dataset directory the service fills (raw_data/, ls_data/, train_ids/)"
        ),
        EnvVar(
            "SEDNA_SAM_QUEUE_URL",
            "annotation queue database: sqlite:///FILE for one replica, postgresql://USER:PASSWORD@HOST/DB "
            "for several (from a Secret: it may hold the password)",
            "sqlite:///<dataset>/cloud-queue.sqlite",
            secret=True,
        ),
        EnvVar(
            "SEDNA_SAM_INDEX", "the Sedna Dataset's txt index the service appends to", "<dataset>/index.txt"
        ),
        EnvVar(
            "SEDNA_SAM_LS_PROJECT",
            "Label Studio project id or title (made if missing)",
            "sedna-sam corner cases",
        ),
        EnvVar(
            "SEDNA_SAM_JOB_OUTPUT_DIR", "the LifelongLearningJob's outputDir: its rounds' metrics in /metrics"
        ),
        EnvVar("SEDNA_SAM_WEBHOOK_URL", "URL Label Studio posts annotation events to (unset: polling only)"),
        EnvVar("SEDNA_SAM_WEBHOOK_SECRET", "shared secret of POST /webhook and the status page", secret=True),
        EnvVar("SEDNA_SAM_REPLICA_ID", "this replica's name in the queue's leases", "the host name"),
        EnvVar("SEDNA_SAM_PRE_ANNOTATION", "sam (SAM masks + semantic voting) or semantic (no SAM)", "sam"),
        EnvVar("SEDNA_SAM_MODELS_DIR", "directory of the SAM checkpoints (`sedna-sam models download`)", "."),
        # Label Studio (`sedna-sam ls`, the converters, the cloud service, the ML backend)
        EnvVar("LABEL_STUDIO_URL", "Label Studio URL"),
        EnvVar("LABEL_STUDIO_API_KEY", "Label Studio API token", secret=True),
        EnvVar(
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            "Label Studio's local-files document root: images are referenced relative to it",
            "/",
        ),
        EnvVar(
            "SEDNA_SAM_LABEL_STUDIO", "the label-studio executable `ls up` starts", "PATH, then .venv-ls/bin"
        ),
        # ours, the interactive ML backend (`sedna-sam ls backend`; `ls push --connect-backend`)
        EnvVar("BACKEND_HOST", "listen address of the ML backend (0.0.0.0 in a container)", "127.0.0.1"),
        EnvVar("BACKEND_PORT", "port of the ML backend", "9090"),
        EnvVar(
            "SEDNA_SAM_BACKEND_USER",
            "HTTP basic-auth user of the ML backend (Label Studio sends it); the backend needs it and "
            "the password, or the token",
        ),
        EnvVar("SEDNA_SAM_BACKEND_PASSWORD", "HTTP basic-auth password of the ML backend", secret=True),
        EnvVar("SEDNA_SAM_BACKEND_TOKEN", "bearer token the ML backend accepts instead", secret=True),
        # tests and benches only
        EnvVar(
            "SEDNA_SAM_PG_BIN",
            "PostgreSQL's bin directory for the throwaway local server of the tests and bench/scaleout.py",
            "PATH, then /usr/lib/postgresql/<newest>/bin",
        ),
    )
}

# What Sedna's global manager gives every worker (createPod); inference pods get no KB_SERVER
# (createInferPod): they read the KB server's URLs from the deployed index instead.
SEDNA_WORKER_ENV = ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "KB_SERVER")
SEDNA_INFERENCE_ENV = ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER")
LIB_ENV = ("edge_output_url", "MIN_TRAIN_SAMPLE", "SEDNA_SAM_MODEL_CACHE")
STORE_ENV = ("S3_ENDPOINT_URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
LABEL_STUDIO_ENV = ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
LOADING_ENV = ("SEDNA_SAM_MAX_IMAGE_PIXELS", "HF_HUB_OFFLINE", "SEDNA_SAM_MODEL_CACHE", "LOG_LEVEL")


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
# Our own processes: nothing is set by Sedna, and flags replace every name.
ANNOTATE_ENV = (
    "JOB_COMPLETION_INDEX",
    "SEDNA_SAM_SHARD_COUNT",
    "SEDNA_SAM_CLIP_MODEL",
    "TORCHINDUCTOR_CACHE_DIR",
)
CLOUD_ENV = (
    "SEDNA_SAM_QUEUE_URL", "SEDNA_SAM_INDEX", "SEDNA_SAM_LS_PROJECT", "SEDNA_SAM_JOB_OUTPUT_DIR",
    "SEDNA_SAM_WEBHOOK_URL", "SEDNA_SAM_WEBHOOK_SECRET", "SEDNA_SAM_REPLICA_ID", "SEDNA_SAM_PRE_ANNOTATION",
    "SEDNA_SAM_MODELS_DIR",
)  # fmt: skip
BACKEND_AUTH_ENV = ("SEDNA_SAM_BACKEND_USER", "SEDNA_SAM_BACKEND_PASSWORD", "SEDNA_SAM_BACKEND_TOKEN")
ROLE_ENV["annotate"] = RoleEnv("annotate", (), (), (*ANNOTATE_ENV, *LOADING_ENV, *STORE_ENV))
ROLE_ENV["cloud"] = RoleEnv(
    "cloud",
    (),
    ("SEDNA_SAM_DATASET_DIR", "SEDNA_SAM_STORE"),
    (*CLOUD_ENV, *LABEL_STUDIO_ENV, *LOADING_ENV, *STORE_ENV),
)
ROLE_ENV["ls"] = RoleEnv(
    "ls", (), (), (*LABEL_STUDIO_ENV, "SEDNA_SAM_LABEL_STUDIO", *BACKEND_AUTH_ENV, "LOG_LEVEL")
)
# the ML backend needs a user and password, a token, or both: none of them alone is required
ROLE_ENV["ls-backend"] = RoleEnv(
    "ls-backend", (), (), (*BACKEND_AUTH_ENV, "BACKEND_HOST", "BACKEND_PORT", *LABEL_STUDIO_ENV, *LOADING_ENV)
)
ROLE_ENV["edge"] = ROLE_ENV["inference"]  # the name our CLI and doctor use for it


def get_param(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """Value of env ``name`` (as given, then upper-cased), else ``default``.

    Empty values count as unset, as in Sedna's ``Context.get_parameters``.
    """
    env = os.environ if env is None else env
    value = env.get(name) or env.get(name.upper())
    return value if value else default


def given_or_param(given: Any, name: str, default: Any = None, env: Mapping[str, str] | None = None) -> Any:
    """A flag's value when given (not None), else :func:`get_param` of env ``name``, else
    ``default``: the one flag-over-env lookup of every worker."""
    return given if given is not None else get_param(name, default, env)


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
    it is secret, and which roles read it (a test keeps the file equal to this)."""
    roles = [r for r in ROLE_ENV if r != "edge"]  # "edge" is another name for "inference"
    lines = [
        "# Configuration: environment variables",
        "",
        "Every environment variable sedna-sam reads, generated from `sedna_sam.sedna_compat.ENV` and",
        "`ROLE_ENV`; `tests/test_architecture.py` keeps this file equal to them and fails on a name",
        "read anywhere in `sedna_sam/` that is not listed. Regenerate with",
        '`python -c "from sedna_sam.sedna_compat import env_reference_markdown as m;',
        "print(m(), end='')\" > docs/configuration.md`. Command-line flags override every name.",
        "The Sedna workers (inference = `edge run`, train, eval) look a name up as written, then",
        "upper-cased, as Sedna's `Context.get_parameters` does. Our other processes: annotate",
        "(`sedna-sam annotate`, the backfill Indexed Job), cloud (`cloud serve|status|retry`), ls",
        "(`sedna-sam ls`), ls-backend (`ls backend`, the interactive ML backend). Secrets come from",
        "the environment or a Kubernetes Secret (README, Deploy), never from a command line, and are",
        "never logged.",
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
