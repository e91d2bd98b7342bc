"""Health checks for a node or pod that runs one sedna-sam role, each saying what to fix.

A check is a plain function ``check(ctx) -> list[CheckResult]`` registered in
:data:`CHECKS`; a role is the list of check names in :data:`ROLE_CHECKS`. Checks only
read the environment and touch the outside world (files, the store, Label Studio, the
GPU) in the smallest way that proves it works; they never print secret values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sedna_sam.errors import SednaSamError
from sedna_sam.labelstudio.http import TOKEN_ENV, URL_ENV, httpx_module, open_client
from sedna_sam.registry import Registry
from sedna_sam.sedna_compat import get_param, missing_env, role_env, split_urls, under_sedna
from sedna_sam.storage import is_local_url, local_path

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SEDNA_LIB_INSTALL = (
    'scripts/install-sedna-lib.sh "$(command -v python3)" (kubeedge/sedna lib/ at v0.7.0 with the '
    "requirements it really needs, as our Dockerfiles do)"
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""


@dataclass
class DoctorContext:
    """What the checks look at: the role, its environment and the resources to probe."""

    role: str
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    model_paths: list[str] = field(default_factory=list)
    ls_url: str | None = None
    ls_token: str | None = None
    store_url: str | None = None
    timeout_s: float = 5.0
    verify_hash: bool = False  # sha256 of official SAM checkpoints (seconds per GB)


# Which env variables (the Sedna worker contract in sedna_sam.sedna_compat) name local
# directories a role writes to, and model files it must read.
WRITABLE_DIR_ENV: dict[str, tuple[str, ...]] = {
    "edge": ("unseen_save_url", "INFERENCE_RESULT_DIR"),
    "train": ("OUTPUT_URL",),
    "eval": ("OUTPUT_URL",),
}
MODEL_ENV: dict[str, tuple[str, ...]] = {"edge": ("MODEL_URLS",), "eval": ("MODEL_URLS",)}

CheckFn = Callable[[DoctorContext], "list[CheckResult]"]
CHECKS: Registry[CheckFn] = Registry("doctor check")

ROLE_CHECKS: dict[str, list[str]] = {
    "edge": ["sedna-env", "sedna-lib", "dirs", "models", "store", "gpu"],
    "cloud": ["models", "label-studio", "store", "gpu"],
    "train": ["sedna-env", "sedna-lib", "dirs", "store", "gpu"],
    "eval": ["sedna-env", "sedna-lib", "dirs", "models", "gpu"],
}


@CHECKS.register("sedna-env")
def check_sedna_env(ctx: DoctorContext) -> list[CheckResult]:
    missing = missing_env(ctx.role, ctx.env)
    in_job = under_sedna(ctx.env)
    if not missing:
        spec = role_env(ctx.role)
        return [CheckResult("sedna env", OK, f"{len(spec.needed)} required variables set")]
    if in_job:
        return [
            CheckResult(
                "sedna env",
                FAIL,
                f"missing in this Sedna worker: {', '.join(missing)}",
                "set them in the LifelongLearningJob template's env (manifests/) or check the "
                "Sedna global manager's version",
            )
        ]
    return [
        CheckResult(
            "sedna env",
            WARN,
            f"not started by Sedna (no JOB_NAME/WORKER_NAME); unset: {', '.join(missing)}",
            "fine for a local run (pass the paths as options); in a pod, create it from the "
            "LifelongLearningJob in manifests/",
        )
    ]


@CHECKS.register("sedna-lib")
def check_sedna_lib(ctx: DoctorContext) -> list[CheckResult]:
    if importlib.util.find_spec("sedna") is None:
        return [
            CheckResult(
                "sedna lib",
                WARN,
                "Sedna's Python lib is not installed: the worker runs standalone",
                SEDNA_LIB_INSTALL,
            )
        ]
    try:
        found = importlib.util.find_spec("sedna.core.lifelong_learning") is not None
    except ImportError:  # a `sedna` module that is not a package (the unrelated PyPI one)
        found = False
    if not found:
        return [
            CheckResult(
                "sedna lib",
                FAIL,
                "a module named `sedna` is installed but it is not KubeEdge Sedna (no sedna.core)",
                "pip uninstall sedna (the PyPI `sedna` is an unrelated package), then " + SEDNA_LIB_INSTALL,
            )
        ]
    from sedna_sam.sedna_lib import sedna_lib_version

    version = sedna_lib_version() or "unknown"
    return [
        CheckResult(
            "sedna lib", OK, f"kubeedge/sedna lib {version} importable (sedna.core.lifelong_learning)"
        )
    ]


@CHECKS.register("dirs")
def check_dirs(ctx: DoctorContext) -> list[CheckResult]:
    results = []
    for name in WRITABLE_DIR_ENV.get(ctx.role, ()):
        value = get_param(name, env=ctx.env)
        if not value or not is_local_url(value):
            continue  # unset, or a store URL: the store check covers remote writes
        results.append(probe_local_dir(f"dir {name}", local_path(value), name))
    return results


def probe_local_dir(label: str, path: str, source: str) -> CheckResult:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".sedna-sam-doctor-{uuid.uuid4().hex}")
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        os.remove(probe)
    except OSError as exc:
        return CheckResult(
            label,
            FAIL,
            f"{path} ({source}) is not writable: {exc.strerror or exc}",
            "mount a writable volume there (hostPath/PVC) and run the pod with an fsGroup that owns it",
        )
    return CheckResult(label, OK, f"{path} writable")


@CHECKS.register("models")
def check_models(ctx: DoctorContext) -> list[CheckResult]:
    urls = list(ctx.model_paths)
    for name in MODEL_ENV.get(ctx.role, ()):
        urls.extend(split_urls(get_param(name, "", env=ctx.env) or ""))
    results = []
    if ctx.role == "cloud" and not urls:
        results.append(sam_checkpoints_in(ctx.env.get("SEDNA_SAM_MODELS_DIR")))
        urls = [str(Path(ctx.env["SEDNA_SAM_MODELS_DIR"]) / n) for n in official_sam_files(results[-1])]
    if not urls and results:
        return results
    if not urls:
        status = WARN if ctx.role in ("edge", "cloud") else FAIL
        return [
            CheckResult(
                "models",
                status,
                "no model file given (--model PATH, or MODEL_URLS from Sedna)",
                "mount the checkpoints and pass --model, or fetch them with `sedna-sam models download`",
            )
        ]
    return results + [probe_model(url, ctx.verify_hash) for url in urls]


def sam_checkpoints_in(models_dir: str | None) -> CheckResult:
    """The official SAM checkpoints present in the annotation service's models directory."""
    from sedna_sam.models import CHECKPOINTS

    fix = f"sedna-sam models download vit_h --dir {models_dir or 'DIR'} (checksummed; resumes)"
    if not models_dir:
        return CheckResult("sam checkpoints", WARN, "SEDNA_SAM_MODELS_DIR is not set", "set it, or " + fix)
    found = [c.filename for c in CHECKPOINTS.values() if (Path(models_dir) / c.filename).is_file()]
    if not found:
        return CheckResult("sam checkpoints", FAIL, f"no SAM checkpoint in {models_dir}", fix)
    return CheckResult("sam checkpoints", OK, f"{models_dir}: {', '.join(found)}")


def official_sam_files(result: CheckResult) -> list[str]:
    """File names listed by a passing :func:`sam_checkpoints_in` result."""
    if result.status != OK:
        return []
    return [name.strip() for name in result.detail.split(": ", 1)[1].split(",")]


def verify_official(path: str, verify_hash: bool) -> CheckResult | None:
    """Size (and sha256) check of a file named like an official SAM checkpoint; None for others."""
    from sedna_sam.errors import InputError
    from sedna_sam.models import CHECKPOINTS, verify_checkpoint

    ckpt = next((c for c in CHECKPOINTS.values() if c.filename == os.path.basename(path)), None)
    if ckpt is None or not is_local_url(path):
        return None
    label = f"model {ckpt.filename}"
    try:
        verify_checkpoint(local_path(path), ckpt, check_hash=verify_hash)
    except InputError as exc:
        return CheckResult(
            label,
            FAIL,
            str(exc),
            f"delete it and run `sedna-sam models download {ckpt.name} --dir {os.path.dirname(path)}`",
        )
    what = "size and sha256" if verify_hash else "size (sha256: --verify-hash)"
    return CheckResult(label, OK, f"{path}: {what} of the official {ckpt.name} checkpoint")


def probe_model(url: str, verify_hash: bool = False) -> CheckResult:
    """A model file (or a Hugging Face model directory) exists, is readable and not empty;
    an official SAM checkpoint also has the registry's size (and sha256)."""
    from sedna_sam.storage import url_filesystem

    label = f"model {os.path.basename(url.rstrip('/')) or url}"
    try:
        fs, path = url_filesystem(url)
        if not fs.exists(path):
            return CheckResult(
                label, FAIL, f"{url} does not exist", "check the path/URL and the volume mount"
            )
        if fs.isdir(path):
            names = [os.path.basename(p) for p in fs.ls(path, detail=False)]
            if "config.json" not in names:
                return CheckResult(
                    label,
                    FAIL,
                    f"{url} is a directory without config.json",
                    "point at a saved model directory",
                )
            return CheckResult(label, OK, f"{url} (model directory, {len(names)} files)")
        size = fs.size(path)
        with fs.open(path, "rb") as fh:
            fh.read(16)
    except (OSError, ValueError, ImportError) as exc:
        return CheckResult(
            label, FAIL, f"{url} cannot be read: {exc}", "check permissions and store credentials"
        )
    if not size:
        return CheckResult(label, FAIL, f"{url} is empty", "download it again (`sedna-sam models download`)")
    official = verify_official(url, verify_hash)
    if official is not None:
        return official
    return CheckResult(label, OK, f"{url} readable ({size / 1e6:.1f} MB)")


@CHECKS.register("label-studio")
def check_label_studio(ctx: DoctorContext) -> list[CheckResult]:
    url = (ctx.ls_url or ctx.env.get(URL_ENV) or "").rstrip("/")
    token = ctx.ls_token or ctx.env.get(TOKEN_ENV)
    if not url:
        return [CheckResult("label studio", FAIL, "no Label Studio URL", f"set {URL_ENV} (or pass --ls-url)")]
    try:
        httpx = httpx_module()
    except SednaSamError as exc:  # a finding, like any other: the check cannot run here
        return [
            CheckResult("label studio", FAIL, "httpx, Label Studio's HTTP client, is not installed", str(exc))
        ]
    # One try each, no retries: the doctor reports what it finds, it does not wait.
    try:
        with open_client(url, timeout_s=ctx.timeout_s, retries=0) as http:
            http.get("/health").raise_for_status()
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        return [
            CheckResult(
                "label studio",
                FAIL,
                f"{url} not reachable: {type(exc).__name__}: {exc}",
                "check the Service name/port and that the Label Studio pod is Ready",
            )
        ]
    if not token:
        return [
            CheckResult(
                "label studio",
                FAIL,
                f"{url} reachable, but no API token",
                f"set {TOKEN_ENV} from the secret (key {TOKEN_ENV})",
            )
        ]
    try:
        with open_client(url, token, timeout_s=ctx.timeout_s, retries=0) as http:
            resp = http.get("/api/current-user/whoami")
            if resp.status_code >= 400:
                return [
                    CheckResult(
                        "label studio",
                        FAIL,
                        f"{url} rejected the token (HTTP {resp.status_code})",
                        "use the token of a Label Studio user (Account & Settings) and start Label Studio "
                        "with legacy tokens enabled (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)",
                    )
                ]
            who = resp.json()
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return [CheckResult("label studio", FAIL, f"{url} whoami failed: {exc}", "check Label Studio's logs")]
    user = who.get("email") or who.get("username") or "?"
    return [CheckResult("label studio", OK, f"{url} answers, token accepted (user {user})")]


@CHECKS.register("store")
def check_store(ctx: DoctorContext) -> list[CheckResult]:
    url = ctx.store_url
    if not url:
        return [
            CheckResult(
                "store",
                WARN,
                "no store given, not checked",
                "pass --store URL (the directory or s3:// URL the edge ships flagged samples to)",
            )
        ]
    from sedna_sam.storage import url_filesystem

    probe_name = f".sedna-sam-doctor/{socket.gethostname()}-{uuid.uuid4().hex}"
    try:
        fs, root = url_filesystem(url)
        probe = f"{root.rstrip('/')}/{probe_name}"
        if is_local_url(url):
            os.makedirs(os.path.dirname(probe), exist_ok=True)
        fs.pipe_file(probe, b"ok")
        read_back = fs.cat_file(probe)
        fs.rm_file(probe)
    except Exception as exc:  # fsspec backends raise their own types (botocore, PermissionError)
        fix = (
            "check S3_ENDPOINT_URL, ACCESS_KEY_ID/SECRET_ACCESS_KEY and the bucket"
            if not is_local_url(url)
            else ("mount a writable volume there")
        )
        return [CheckResult("store", FAIL, f"{url} not writable: {type(exc).__name__}: {exc}", fix)]
    if read_back != b"ok":
        return [CheckResult("store", FAIL, f"{url} returned other bytes than written", "check the store")]
    return [CheckResult("store", OK, f"{url} writable (wrote, read back, removed a probe)")]


@CHECKS.register("gpu")
def check_gpu(ctx: DoctorContext) -> list[CheckResult]:
    try:
        import torch
    except ImportError:
        return [
            CheckResult("gpu", FAIL, "torch is not installed", "install the torch/torchvision pair (README)")
        ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return [CheckResult("gpu", OK, f"{torch.cuda.device_count()} CUDA device(s): {names}")]
    if ctx.role == "edge":
        return [
            CheckResult("gpu", OK, f"CPU inference (torch {torch.__version__}); no GPU needed on the edge")
        ]
    return [
        CheckResult(
            "gpu",
            WARN,
            f"no CUDA GPU visible (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): "
            "this role falls back to the CPU and is slow",
            "request nvidia.com/gpu in the pod, install the NVIDIA device plugin, use the CUDA image "
            "(Dockerfile.cloud)",
        )
    ]


def run_checks(ctx: DoctorContext) -> list[CheckResult]:
    """Run the role's checks in order; a check that crashes is reported, not raised."""
    results: list[CheckResult] = []
    for name in ROLE_CHECKS[ctx.role]:
        try:
            results.extend(CHECKS.get(name)(ctx))
        except Exception as exc:  # a doctor must report, never die on the thing it diagnoses
            results.append(
                CheckResult(name, FAIL, f"check crashed: {type(exc).__name__}: {exc}", "report a bug")
            )
    return results


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def format_table(results: list[CheckResult]) -> str:
    """A fixed-width table; each non-OK row is followed by its fix."""
    width = max([len("CHECK")] + [len(r.name) for r in results])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<6}  {r.detail}")
        if r.status != OK and r.fix:
            lines.append(f"{'':<{width}}  {'':<6}  -> fix: {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
    return "\n".join(lines)


def format_json(results: list[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
