"""The eval worker: typed options, every model on the new- and old-domain test sets, and
with the gate the deploy decision and the publication of an accepted model.

Each option left ``None`` is read from the env name in brackets beside it
(:mod:`sedna_sam.lifelong.worker_env`); under Sedna's lib the evaluation goes through
:func:`sedna_sam.lifelong.sedna_worker.eval_under_sedna`.
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
from sedna_sam.lifelong.evaluate import EvalMetrics, evaluate_segformer
from sedna_sam.lifelong.gate import GateDecision, GatePolicy, decide, write_decision
from sedna_sam.lifelong.report import report_for_evaluation
from sedna_sam.lifelong.worker_env import FromEnv, env_float, is_remote, upload_outputs, use_sedna_lib
from sedna_sam.storage import atomic_write_json, local_path

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
GATE_NAME = "gate.json"


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
    pick = FromEnv(env)
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
