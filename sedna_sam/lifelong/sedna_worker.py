"""The train and eval workers under kubeedge/sedna's lib (see :mod:`sedna_sam.sedna_job`).

Train: ``LifelongLearning.train`` on the round's data source. Round 1 trains our
estimator from the base model; later rounds (HAS_COMPLETED_INITIAL_TRAINING=true) go
through the lib's ``update``, which fetches the previous round's model from the knowledge
base named by CLOUD_KB_INDEX and fine-tunes it (our ``SednaSamFinetune`` decision), with
the samples that model learned from replayed. The lib saves the model, uploads it to the
KB server, writes ``OUTPUT_URL/index.pkl`` and reports that index to the local controller,
which hands it to the eval worker as MODEL_URLS.

Eval: our evaluation of that index's model against the baseline (the last model this
job's gate accepted, else BASELINE_MODEL_URL; with neither, the first model is accepted:
nothing runs at the edge yet). The decision is the report: accepted -> the evaluated index
(copied to ``OUTPUT_URL/index.pkl``) is reported and the local controller deploys it to
``<outputDir>/deploy/index.pkl``; rejected -> no model in the report, nothing deployed.
The worker exits 0 either way (Sedna restarts failed pods forever); only errors exit
non-zero.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sedna_sam.errors import SednaSamError
from sedna_sam.lifelong.eval_worker import (
    GATE_NAME,
    EvalOptions,
    EvalResult,
    eval_inputs,
    evaluate_models,
    gate_from_metrics,
    write_metrics,
)
from sedna_sam.lifelong.evaluate import EvalMetrics
from sedna_sam.lifelong.gate import GateDecision, write_decision
from sedna_sam.lifelong.report import report_for_evaluation
from sedna_sam.lifelong.train_worker import TrainOptions, TrainPlan, make_estimator
from sedna_sam.lifelong.worker_env import is_remote, upload_outputs
from sedna_sam.sedna_job import runtime
from sedna_sam.storage import atomic_write_bytes, atomic_write_json, local_path

log = logging.getLogger(__name__)

ACCEPTED_NAME = "accepted.json"  # in <outputDir>/eval/: the last model the gate accepted
ACCEPTED_MODEL = "accepted.model"  # and a copy of it, the next round's baseline


def train_under_sedna(plan: TrainPlan, options: TrainOptions) -> dict:
    """One train round through ``LifelongLearning.train`` (see the module doc)."""
    from sedna.datasources import TxtDataParse  # type: ignore[import-not-found]

    runtime.prepare_env("train")
    if not plan.new:
        raise SednaSamError("the round's training index is empty: nothing to train")
    try:
        plan.work_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise SednaSamError(
            f"OUTPUT_URL {plan.work_dir}: cannot create it as uid {_uid()}; Sedna's local controller creates "
            f"its parent as root: run `sedna-sam init-dirs` as an init container (our manifests do)"
        ) from None
    estimator = make_estimator(plan, options)
    data = TxtDataParse(data_type="train")
    data.parse(plan.train_index)
    with runtime.lib_workspace():
        ll = runtime.lifelong_learning(estimator)
        result = ll.train(data)
    report = estimator.last_result.to_json() if estimator.last_result else {}
    report["round"] = "update" if plan.initial_done else "initial"
    report["tasks"] = sorted(result) if isinstance(result, dict) else []
    report["knowledge_base"] = f"{plan.output.rstrip('/')}/index.pkl"
    atomic_write_json(plan.work_dir / "sedna_train.json", report, indent=2)
    upload_outputs(plan.work_dir, plan.output)
    log.info("train round done under Sedna's lib: knowledge base %s", report["knowledge_base"])
    return report


def _uid() -> int:
    import os

    return os.getuid()


# ----------------------------------------------------------------------------- eval


def parent_url(url: str) -> str:
    """The directory of a local path or an s3:// URL (where the job's eval rounds live)."""
    return url.rstrip("/").rsplit("/", 1)[0]


def accepted_record(output_url: str) -> dict | None:
    """The last model this job's gate accepted (kept beside the eval rounds, locally or in
    S3), or None; ``record["model"]`` is a local copy of it to evaluate."""
    from sedna_sam.model_files import fetch_remote

    base = parent_url(output_url)
    record_url, model_url = f"{base}/{ACCEPTED_NAME}", f"{base}/{ACCEPTED_MODEL}"
    if not is_remote(output_url):
        path, model = Path(local_path(record_url)), Path(local_path(model_url))
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
    else:
        from sedna_sam.storage import url_filesystem

        fs, path_in_fs = url_filesystem(record_url)
        if not fs.exists(path_in_fs):
            return None
        text = fs.cat_file(path_in_fs).decode()
        model = fetch_remote(model_url)
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise SednaSamError(
            f"{record_url}: not valid JSON ({exc}); delete it to start the gate afresh"
        ) from None
    if not Path(model).is_file():
        log.warning("%s names a model but %s is missing; no baseline", record_url, model_url)
        return None
    record["model"] = str(model)
    return record


def keep_accepted(output_url: str, candidate_archive: Path, record: dict) -> None:
    """Remember the accepted model (copy first, record last: a killed worker leaves the
    old pair or the new model beside the old record, never a record without its model)."""
    base = parent_url(output_url)
    if not is_remote(output_url):
        atomic_write_bytes(Path(local_path(base)) / ACCEPTED_MODEL, candidate_archive.read_bytes())
        atomic_write_json(Path(local_path(base)) / ACCEPTED_NAME, record, indent=2)
        return
    from sedna_sam.storage import url_filesystem

    fs, path = url_filesystem(base)
    fs.put(str(candidate_archive), f"{path}/{ACCEPTED_MODEL}")
    fs.pipe_file(f"{path}/{ACCEPTED_NAME}", json.dumps(record, indent=2).encode())


def _model_summary(per: Mapping[str, EvalMetrics]) -> dict[str, Any]:
    return {f"mIoU_{d}": (None if m.miou != m.miou else round(m.miou, 6)) for d, m in per.items()}


def eval_under_sedna(options: EvalOptions, env: Mapping[str, str] | None = None) -> EvalResult:
    """Evaluate the train round's model and report the gate's decision (see the module doc)."""
    from sedna_sam.model_files import resolve_model

    runtime.prepare_env("eval")
    inputs = eval_inputs(options, env)
    index = Path(inputs.models[0])
    if index.suffix != ".pkl":
        raise SednaSamError(
            f"MODEL_URLS={inputs.models[0]}: expected the train round's knowledge base (index.pkl)"
        )
    try:
        inputs.output.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise SednaSamError(
            f"OUTPUT_URL {inputs.output}: cannot create it as uid {_uid()}; run `sedna-sam init-dirs` as an "
            "init container (our manifests do)"
        ) from None
    candidate = resolve_model(str(index))
    if candidate.archive is None:
        raise SednaSamError(
            f"{index}: its model is not a sedna-sam model archive; was it trained by sedna-sam?"
        )
    record = accepted_record(inputs.output_url)
    baseline = record["model"] if record else inputs.baseline
    models = ({baseline: baseline} if baseline else {}) | {str(index): candidate.source}
    metrics = evaluate_models(models, inputs.domains, options.device, options.progress)
    write_metrics(inputs, metrics, baseline)
    if baseline:
        decision = gate_from_metrics(metrics[baseline], metrics[str(index)], inputs.policy)
    else:
        decision = GateDecision(
            True,
            [
                "no model of this job was accepted before and BASELINE_MODEL_URL is unset: the first model is accepted"
            ],
            None,
            None,
            inputs.policy,
            {"candidate_new_mIoU": _model_summary(metrics[str(index)]).get("mIoU_new")},
        )
    write_decision(
        inputs.output / GATE_NAME, decision, baseline=baseline, candidate=str(index), published_to=None
    )
    report_for_evaluation(
        inputs.output, metrics, models, inputs.domains, str(index), baseline, decision, options.device
    )
    log.info("gate: %s (%s)", "ACCEPT" if decision.accept else "REJECT", "; ".join(decision.reasons))

    results = None
    with runtime.lib_workspace():
        ll = runtime.lifelong_learning(_NoEstimator())
        if decision.accept:
            deployed_index = inputs.output / "index.pkl"
            shutil.copyfile(index, deployed_index)
            keep_accepted(
                inputs.output_url,
                candidate.archive.archive,
                {
                    "index": str(index),
                    "round_output": str(inputs.output),
                    "metrics": _model_summary(metrics[str(index)]),
                },
            )
            names = metrics[str(index)]
            classes = next(iter(names.values())).names if names else []
            results = [
                {
                    "format": "pkl",
                    "url": (
                        f"{inputs.output_url.rstrip('/')}/index.pkl"
                        if is_remote(inputs.output_url)
                        else runtime.data_relpath(deployed_index)
                    ),
                    "metrics": {**_model_summary(metrics[str(index)]), "gate": "accept"},
                    "current_metric": {
                        candidate.archive.archive.name: {"mIoU": _first_miou(metrics[str(index)])}
                    },
                    "classes": list(classes),
                }
            ]
        upload_outputs(inputs.output, inputs.output_url)  # before the report: the LC copies what it names
        runtime.report(ll, "completed", results, kind="eval")
    return EvalResult(metrics, decision, baseline, str(index), {"reported": results})


def _first_miou(per: Mapping[str, EvalMetrics]) -> float:
    for domain in ("new", "old"):
        if domain in per and per[domain].miou == per[domain].miou:
            return round(float(per[domain].miou), 6)
    return 0.0


class _NoEstimator:
    """Eval only reports through ``LifelongLearning``: it never trains or predicts there."""

    def train(self, *args, **kwargs):
        raise SednaSamError("not used in evaluation")

    predict = evaluate = load = save = train


__all__ = ("train_under_sedna", "eval_under_sedna")
