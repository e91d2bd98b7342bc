"""The train and eval workers: typed options, resolved once from flags and Sedna's env.

Each option left ``None`` is read from the env name Sedna (or our manifests) give the
worker (listed in :data:`sedna_sam.sedna_compat.ROLE_ENV`). With kubeedge/sedna's lib
installed and a LifelongLearningJob as the parent, :func:`run_train_worker` and
:func:`run_eval_worker` hand over to :mod:`sedna_sam.lifelong.sedna_worker`; otherwise
they do the same work themselves (a local run, or a cluster without the lib).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedna_sam import sedna_compat
from sedna_sam.errors import SednaSamError
from sedna_sam.lifelong import data as ds
from sedna_sam.lifelong.estimator import DEFAULT_BASE_MODEL, SegformerEstimator
from sedna_sam.lifelong.evaluate import EvalMetrics, evaluate_segformer
from sedna_sam.lifelong.gate import GateDecision, GatePolicy, decide, write_decision
from sedna_sam.lifelong.report import report_for_evaluation
from sedna_sam.lifelong.train import MODEL_DIR_NAME, REPLAY_INDEX_NAME, TrainConfig
from sedna_sam.storage import atomic_write_json, is_local_url, local_path

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
GATE_NAME = "gate.json"


def env_float(name: str, value: str | float | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SednaSamError(f"{name}={value!r} is not a number") from None


class _FromEnv:
    """Flag value if given, else the env name's value (Sedna's Context lookup), else default."""

    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = env

    def __call__(self, given: Any, name: str, default: Any = None) -> Any:
        return given if given is not None else sedna_compat.get_param(name, default, env=self.env)


# ----------------------------------------------------------------------------- train


@dataclass
class TrainOptions:
    """``sedna-sam train`` flags; ``None`` = read the env name in brackets."""

    train_index: str | None = None  # [TRAIN_DATASET_URL]
    output: str | None = None  # [OUTPUT_URL]
    original_index: str | None = None  # [ORIGINAL_DATASET_URL]
    kb_index: str | None = None  # [CLOUD_KB_INDEX]
    base_model: str | None = None  # [BASE_MODEL_URL]
    replay_index: list[str] | None = None  # [REPLAY_DATASET_URL]
    replay_original: bool = False
    steps: int | None = None  # [TRAIN_STEPS]
    batch_size: int | None = None  # [BATCH_SIZE]
    lr: float | None = None  # [LEARNING_RATE]
    replay_ratio: float | None = None  # [REPLAY_RATIO]
    input_size: tuple[int, int] | None = None
    seed: int = 0
    checkpoint_every: int | None = None
    device: str | None = None
    no_sedna: bool = False
    initial_done: bool | None = None  # [HAS_COMPLETED_INITIAL_TRAINING]
    progress: bool = True


@dataclass
class TrainPlan:
    """Everything one training round uses, resolved from flags and env."""

    base_model: str
    new: list[ds.LabelledSample]
    replay: list[ds.LabelledSample]  # the previous round's knowledge + explicit replay indexes
    extra_replay: list[ds.LabelledSample]  # explicit replay indexes alone (REPLAY_DATASET_URL)
    output: str  # OUTPUT_URL as given (a local directory, or s3://...)
    work_dir: Path  # local directory the round writes to (OUTPUT_URL itself when local)
    config: TrainConfig
    data_root: Path | None
    train_index: str  # TRAIN_DATASET_URL as resolved
    initial_done: bool
    kb_index: str | None


def is_remote(url: str) -> bool:
    """Not a plain path or ``file://`` URL (an S3 or HTTP output)."""
    return not is_local_url(url)


def _previous_round(
    kb_index: str | None, env: Mapping[str, str] | None
) -> tuple[list[ds.LabelledSample], Path | None]:
    """(replay samples, previous model dir) from CLOUD_KB_INDEX when it names a round of
    ours: a round directory, its knowledge_index.txt, or an index.pkl inside one. (Under
    Sedna's lib the previous model and its knowledge come from the knowledge base itself.)"""
    if not kb_index:
        return [], None
    path = sedna_compat.container_path(kb_index, env)
    round_dir = path if path.is_dir() else path.parent
    txt = path if path.suffix == ".txt" else round_dir / REPLAY_INDEX_NAME
    if not txt.is_file():
        log.warning(
            "CLOUD_KB_INDEX=%s: no %s there; no replay of an earlier round", kb_index, REPLAY_INDEX_NAME
        )
        return [], None
    model = round_dir / MODEL_DIR_NAME
    return ds.read_index(txt), (model if (model / "config.json").is_file() else None)


def plan_training(options: TrainOptions, env: Mapping[str, str] | None = None) -> TrainPlan:
    """Resolve a training round from flags over env."""
    pick = _FromEnv(env)
    train_url = pick(options.train_index, "TRAIN_DATASET_URL")
    output = pick(options.output, "OUTPUT_URL")
    if not train_url:
        raise SednaSamError("no training data: pass --train-index or set TRAIN_DATASET_URL")
    if not output:
        raise SednaSamError("no output directory: pass --output or set OUTPUT_URL")
    original = pick(options.original_index, "ORIGINAL_DATASET_URL")
    root = ds.sedna_data_root(original)
    new = ds.read_index(train_url, data_root=root)
    initial = pick(options.initial_done, "HAS_COMPLETED_INITIAL_TRAINING", "false")
    initial_done = initial if isinstance(initial, bool) else str(initial).lower() == "true"
    kb_index = pick(options.kb_index, "CLOUD_KB_INDEX")
    kb_replay, kb_model = _previous_round(kb_index, env)

    extra_urls = options.replay_index
    if extra_urls is None:
        extra_urls = sedna_compat.split_urls(sedna_compat.get_param("REPLAY_DATASET_URL", "", env=env) or "")
    extra: list[ds.LabelledSample] = []
    for url in extra_urls:
        extra += ds.read_index(url, data_root=root)
    replay = kb_replay + extra
    if original and options.replay_original:
        # Opt-in: the Dataset's other lines. Sedna's local controller puts a share of every
        # round's new lines into the evaluation split, and the train worker is not told
        # which: only use this when the Dataset index holds no evaluation samples.
        test_url = sedna_compat.get_param("TEST_DATASET_URL", env=env)
        held_out = {(s.image, s.label) for s in new}
        if test_url and Path(test_url).is_file():
            held_out |= {(s.image, s.label) for s in ds.read_index(test_url, data_root=root)}
        replay += [s for s in ds.read_index(original, missing_ok=True) if (s.image, s.label) not in held_out]
    new_keys = {(s.image, s.label) for s in new}
    replay = list({(s.image, s.label): s for s in replay if (s.image, s.label) not in new_keys}.values())

    base = options.base_model or sedna_compat.get_param("BASE_MODEL_URL", env=env)
    if not base and kb_model is not None:
        base = str(kb_model)
    work_dir = (
        Path(tempfile.mkdtemp(prefix="sedna-sam-train-")) if is_remote(output) else Path(local_path(output))
    )
    if not base and initial_done and (work_dir / MODEL_DIR_NAME / "config.json").is_file():
        base = str(work_dir / MODEL_DIR_NAME)
    defaults = TrainConfig()
    config = TrainConfig(
        steps=int(env_float("TRAIN_STEPS", pick(options.steps, "TRAIN_STEPS"), defaults.steps)),
        batch_size=int(env_float("BATCH_SIZE", pick(options.batch_size, "BATCH_SIZE"), defaults.batch_size)),
        lr=env_float("LEARNING_RATE", pick(options.lr, "LEARNING_RATE"), defaults.lr),
        replay_ratio=env_float(
            "REPLAY_RATIO", pick(options.replay_ratio, "REPLAY_RATIO"), defaults.replay_ratio
        ),
        input_size=options.input_size,
        seed=options.seed,
        checkpoint_every=options.checkpoint_every or defaults.checkpoint_every,
    )
    return TrainPlan(
        base or DEFAULT_BASE_MODEL,
        new,
        replay,
        extra,
        output,
        work_dir,
        config,
        root,
        train_url,
        initial_done,
        kb_index,
    )


def make_estimator(plan: TrainPlan, options: TrainOptions) -> SegformerEstimator:
    return SegformerEstimator(
        plan.base_model,
        plan.config,
        list(plan.replay),
        plan.work_dir,
        options.device,
        options.progress,
        data_roots=[p for p in (plan.data_root, ds.index_base(plan.train_index)) if p is not None],
        extra_replay=list(plan.extra_replay),
    )


def run_train_worker(options: TrainOptions, env: Mapping[str, str] | None = None) -> dict:
    """The train worker: plan the round, train (under Sedna's LifelongLearning when the lib
    is present and a Sedna job started us), return the training report."""
    plan = plan_training(options, env)
    log.info(
        "train round: base %s, %d new samples, %d replay samples -> %s",
        plan.base_model,
        len(plan.new),
        len(plan.replay),
        plan.output,
    )
    if use_sedna_lib(options.no_sedna, env):
        from sedna_sam.lifelong.sedna_worker import train_under_sedna

        return train_under_sedna(plan, options)
    report = make_estimator(plan, options).train(plan.new)
    upload_outputs(plan.work_dir, plan.output)
    return report


def use_sedna_lib(disabled: bool, env: Mapping[str, str] | None = None) -> bool:
    """Run under Sedna's lib: it is installed, a Sedna job started us, and not --no-sedna."""
    if disabled or not sedna_compat.under_sedna(env):
        return False
    if sedna_compat.sedna_available():
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


# ----------------------------------------------------------------------------- eval


@dataclass
class EvalOptions:
    """``sedna-sam eval`` flags; ``None`` = read the env name in brackets."""

    models: list[str] | None = None  # [MODEL_URLS]
    baseline: str | None = None  # [BASELINE_MODEL_URL]
    test_index: str | None = None  # [TEST_DATASET_URL]
    old_test_index: str | None = None  # [OLD_TEST_DATASET_URL]
    output: str | None = None  # [OUTPUT_URL]
    original_index: str | None = None  # [ORIGINAL_DATASET_URL]
    min_new_gain: float | None = None  # [GATE_MIN_NEW_GAIN]
    max_old_drop: float | None = None  # [GATE_MAX_OLD_DROP]
    allow_missing_old: bool = False
    deploy_dir: str | None = None  # [DEPLOY_MODEL_DIR]
    gate: bool = False
    device: str | None = None
    no_sedna: bool = False
    progress: bool = True


@dataclass
class EvalInputs:
    """What an evaluation compares, resolved from flags and env."""

    models: list[str]
    baseline: str | None
    domains: dict[str, list[ds.LabelledSample]]
    test_index: str | None
    old_test_index: str | None
    output: Path  # local directory written to (OUTPUT_URL itself when local, else a scratch dir)
    policy: GatePolicy
    deploy_dir: str | None
    output_url: str = "."  # OUTPUT_URL as given (a local directory, or s3://...)


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, EvalMetrics]]  # model url -> domain -> metrics
    decision: GateDecision | None = None
    baseline: str | None = None
    candidate: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def dedupe(samples: Sequence[ds.LabelledSample]) -> list[ds.LabelledSample]:
    """Each (image, label) once: Sedna's eval split repeats earlier rounds' lines."""
    return list({(s.image, s.label): s for s in samples}.values())


def eval_inputs(
    options: EvalOptions, env: Mapping[str, str] | None = None, models: list[str] | None = None
) -> EvalInputs:
    pick = _FromEnv(env)
    if models is None:
        models = options.models or sedna_compat.split_urls(
            sedna_compat.get_param("MODEL_URLS", "", env=env) or ""
        )
    if not models:
        raise SednaSamError("no model to evaluate: pass --model or set MODEL_URLS")
    test_url = pick(options.test_index, "TEST_DATASET_URL")
    old_url = pick(options.old_test_index, "OLD_TEST_DATASET_URL")
    output_url = str(pick(options.output, "OUTPUT_URL", "."))
    if not test_url and not old_url:
        raise SednaSamError("no test data: pass --test-index/--old-test-index or set TEST_DATASET_URL")
    root = ds.sedna_data_root(pick(options.original_index, "ORIGINAL_DATASET_URL"))
    domains = {
        "new": dedupe(ds.read_index(test_url, data_root=root)) if test_url else [],
        "old": dedupe(ds.read_index(old_url, data_root=root)) if old_url else [],
    }
    policy = GatePolicy(
        min_new_gain=env_float("GATE_MIN_NEW_GAIN", pick(options.min_new_gain, "GATE_MIN_NEW_GAIN"), 0.0),
        max_old_drop=env_float("GATE_MAX_OLD_DROP", pick(options.max_old_drop, "GATE_MAX_OLD_DROP"), 0.02),
        require_old=not options.allow_missing_old,
    )
    return EvalInputs(
        list(models),
        pick(options.baseline, "BASELINE_MODEL_URL"),
        domains,
        test_url,
        old_url,
        Path(tempfile.mkdtemp(prefix="sedna-sam-eval-"))
        if is_remote(output_url)
        else Path(local_path(output_url)),
        policy,
        pick(options.deploy_dir, "DEPLOY_MODEL_DIR"),
        output_url,
    )


def evaluate_models(
    models: Sequence[str] | Mapping[str, str],
    domains: Mapping[str, list[ds.LabelledSample]],
    device,
    progress,
) -> dict[str, dict[str, EvalMetrics]]:
    """model name -> domain -> EvalMetrics, each model loaded once. ``models``: specs, or
    name -> spec when the name to report differs from where the model is loaded from."""
    from sedna_sam.segformer import load_segformer

    specs = dict(models) if isinstance(models, Mapping) else {m: m for m in models}
    metrics: dict[str, dict[str, EvalMetrics]] = {}
    for url, spec in specs.items():
        if url in metrics:
            continue
        seg = load_segformer(spec, device)
        metrics[url] = {d: evaluate_segformer(seg, s, progress) for d, s in domains.items() if s}
        log.info(
            "%s: %s",
            url,
            ", ".join(f"{d} mIoU {m.miou:.4f} ({m.samples} images)" for d, m in metrics[url].items()),
        )
    return metrics


def write_metrics(
    inputs: EvalInputs, metrics: Mapping[str, Mapping[str, EvalMetrics]], baseline: str | None
) -> None:
    atomic_write_json(
        inputs.output / METRICS_NAME,
        {
            "models": {u: {d: m.to_json() for d, m in per.items()} for u, per in metrics.items()},
            "test_index": inputs.test_index,
            "old_test_index": inputs.old_test_index,
            "baseline": baseline,
        },
        indent=2,
    )


def gate_from_metrics(
    baseline: Mapping[str, EvalMetrics], candidate: Mapping[str, EvalMetrics], policy: GatePolicy
) -> GateDecision:
    def m(per, d):
        return per[d].miou if d in per else None

    return decide(m(baseline, "new"), m(candidate, "new"), m(baseline, "old"), m(candidate, "old"), policy)


def run_eval_worker(options: EvalOptions, env: Mapping[str, str] | None = None) -> EvalResult:
    """The eval worker: every model of MODEL_URLS (and the baseline) on the new-domain
    (TEST_DATASET_URL) and old-domain (OLD_TEST_DATASET_URL) test sets; writes
    ``metrics.json`` under OUTPUT_URL; with ``gate`` also the decision ``gate.json`` and,
    when accepted and a deploy directory is set, publishes the candidate there.

    Under Sedna (lib present, started by a job) MODEL_URLS is the train round's knowledge
    base and the decision goes into the report to the local controller instead
    (:func:`sedna_sam.lifelong.sedna_worker.eval_under_sedna`)."""
    if use_sedna_lib(options.no_sedna, env):
        from sedna_sam.lifelong.sedna_worker import eval_under_sedna

        return eval_under_sedna(options, env)
    inputs = eval_inputs(options, env)
    baseline = inputs.baseline
    all_models = ([baseline] if baseline else []) + [m for m in inputs.models if m != baseline]
    metrics = evaluate_models(all_models, inputs.domains, options.device, options.progress)
    write_metrics(inputs, metrics, baseline)
    result = EvalResult(metrics, baseline=baseline)
    if not options.gate:
        report_for_evaluation(
            inputs.output, metrics, {}, inputs.domains, inputs.models[-1], baseline, None, options.device
        )
        upload_outputs(inputs.output, inputs.output_url)
        return result
    candidate = inputs.models[-1]
    if not baseline:
        if len(inputs.models) < 2:
            raise SednaSamError(
                "the gate needs a baseline: pass --baseline (the deployed model) or set BASELINE_MODEL_URL"
            )
        baseline = inputs.models[0]
    result.decision = gate_from_metrics(metrics[baseline], metrics[candidate], inputs.policy)
    result.baseline, result.candidate = baseline, candidate
    published = None
    if result.decision.accept and inputs.deploy_dir:
        published = str(publish_copy(Path(local_path(candidate)), Path(inputs.deploy_dir)))
    write_decision(
        inputs.output / GATE_NAME,
        result.decision,
        baseline=baseline,
        candidate=candidate,
        published_to=published,
    )
    log.info(
        "gate: %s (%s)", "ACCEPT" if result.decision.accept else "REJECT", "; ".join(result.decision.reasons)
    )
    report_for_evaluation(
        inputs.output, metrics, {}, inputs.domains, candidate, baseline, result.decision, options.device
    )
    upload_outputs(inputs.output, inputs.output_url)
    return result


def publish_copy(model: Path, deploy_dir: Path) -> Path:
    """Copy an accepted model directory (or archive) to ``deploy_dir`` atomically (copy
    beside, then rename), so an edge worker watching it never loads half a model."""
    from sedna_sam.lifelong.train import publish_model_dir
    from sedna_sam.model_files import resolve_model

    model_dir = resolve_model(str(model)).path
    deploy_dir = Path(deploy_dir)
    deploy_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=deploy_dir.parent, prefix=f".{deploy_dir.name}-"))
    os.rmdir(tmp)
    shutil.copytree(model_dir, tmp)
    return publish_model_dir(tmp, deploy_dir)
