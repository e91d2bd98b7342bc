"""Sedna's estimator interface over our trainer/evaluator, and the train/eval workers.

:class:`SegformerEstimator` has the methods Sedna's ``LifelongLearning`` calls on an
estimator (``train``, ``evaluate``, ``predict``, ``load``, ``save``). The worker entry
points :func:`run_train_worker` and :func:`run_eval_worker` read Sedna's worker env
(TRAIN_DATASET_URL, ORIGINAL_DATASET_URL, OUTPUT_URL, HAS_COMPLETED_INITIAL_TRAINING,
CLOUD_KB_INDEX for training; MODEL_URLS, TEST_DATASET_URL for evaluation) plus a few
names of ours (listed with Sedna's in :data:`sedna_sam.sedna_compat.ROLE_ENV`);
command-line flags override them.

When the kubeedge/sedna lib is importable, training runs under
``sedna.core.lifelong_learning.LifelongLearning`` (which stores the knowledge base and
reports to the local controller). That path cannot run here (the lib is not installed
in development or CI: ``pip install sedna`` is an unrelated package) and is marked
UNTESTED-HERE below; without the lib the workers do the same work themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam import sedna_compat
from sedna_sam.errors import SednaSamError
from sedna_sam.lifelong import data as ds
from sedna_sam.lifelong.evaluate import Metrics, evaluate_segformer
from sedna_sam.lifelong.gate import GatePolicy, decide, write_decision
from sedna_sam.lifelong.train import MODEL_DIR_NAME, REPLAY_INDEX_NAME, TrainConfig, train_segformer
from sedna_sam.storage import atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "nvidia/segformer-b0-finetuned-cityscapes-1024-1024"
METRICS_NAME = "metrics.json"
GATE_NAME = "gate.json"


def _float(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SednaSamError(f"{name}={value!r} is not a number") from None


# ----------------------------------------------------------------------------- the estimator


def _as_samples(data: Any, data_root: Path | None = None) -> list[ds.Sample]:
    """Samples from what Sedna or a caller hands an estimator: a list of Samples, an index
    path, or a Sedna data source (``.x`` image paths, ``.y`` label paths)."""
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return ds.read_index(data, data_root=data_root)
    if hasattr(data, "x") and hasattr(data, "y"):  # sedna.datasources.BaseDataSource
        ys = list(data.y) if data.y is not None else [None] * len(data.x)
        return [ds.Sample(Path(x), Path(y) if y else None, i + 1) for i, (x, y) in enumerate(zip(data.x, ys))]
    out = []
    for item in data:
        out.append(
            item
            if isinstance(item, ds.Sample)
            else ds.Sample(Path(item[0]), Path(item[1]) if item[1] else None)
        )
    return out


@dataclass
class SegformerEstimator:
    """A Segformer with Sedna's estimator methods.

    ``model_url``: the Segformer to start from (a directory or hub id); after ``train``
    or ``load`` it is the current model. ``replay``: samples mixed into every training
    batch (earlier knowledge). ``work_dir``: where ``train`` writes its round.
    """

    model_url: str = DEFAULT_BASE_MODEL
    config: TrainConfig = field(default_factory=TrainConfig)
    replay: list[ds.Sample] = field(default_factory=list)
    work_dir: Path = Path("sedna-sam-train")
    device: str | None = None
    progress: bool = True
    _seg: Any = None

    def _model(self):
        if self._seg is None:
            from sedna_sam.segformer import load_segformer

            self._seg = load_segformer(self.model_url, self.device)
        return self._seg

    def train(self, train_data, valid_data=None, **kwargs) -> dict:
        """Fine-tune on ``train_data`` with replay; returns the training report (and the
        validation metrics when ``valid_data`` is given)."""
        replay = _as_samples(kwargs.get("replay")) if kwargs.get("replay") is not None else self.replay
        result = train_segformer(
            self.model_url,
            _as_samples(train_data),
            replay,
            kwargs.get("output_dir", self.work_dir),
            self.config,
            self.device,
            progress=self.progress,
        )
        self.model_url, self._seg = str(result.model_dir), None
        out = result.to_json()
        if valid_data is not None:
            out["valid"] = self.evaluate(valid_data)
        return out

    def evaluate(self, data, **kwargs) -> dict:
        """Metrics dict (mIoU, pixel accuracy, per-class IoU, confusion) on labelled samples."""
        return evaluate_segformer(self._model(), _as_samples(data), self.progress).to_json()

    def predict(self, data, **kwargs) -> list[np.ndarray]:
        """(H, W) int64 class-id maps for images: (H, W, 3) uint8 arrays or image paths."""
        from sedna_sam.images import read_image_rgb

        seg = self._model()
        items = data.x if hasattr(data, "x") else data
        if isinstance(items, np.ndarray) and items.ndim == 3:
            items = [items]
        return [seg.predict_ids(read_image_rgb(x) if isinstance(x, (str, Path)) else x) for x in items]

    def load(self, model_url: str = "", **kwargs) -> None:
        self.model_url, self._seg = str(model_url), None
        self._model()

    def save(self, model_path: str = "", **kwargs) -> str:
        """Save the current model as a Segformer directory at ``model_path``."""
        from sedna_sam.segformer import save_segformer

        seg = self._model()
        save_segformer(seg.model, model_path, seg.input_size)
        return str(model_path)


# ----------------------------------------------------------------------------- train worker


def _replay_from_kb(kb_index: str | None) -> tuple[list[ds.Sample], Path | None]:
    """(replay samples, previous model dir) from CLOUD_KB_INDEX: our knowledge index
    (``.txt``), a previous round's output directory, or a Sedna ``index.pkl`` with our
    ``knowledge_index.txt`` beside it."""
    if not kb_index:
        return [], None
    path = Path(kb_index)
    round_dir = path if path.is_dir() else path.parent
    txt = path if path.suffix == ".txt" else round_dir / REPLAY_INDEX_NAME
    if not txt.is_file():
        log.warning(
            "CLOUD_KB_INDEX=%s: no %s there; no replay from the knowledge base (a Sedna KB "
            "index.pkl is read only through our knowledge index next to it)",
            kb_index,
            REPLAY_INDEX_NAME,
        )
        return [], None
    model = round_dir / MODEL_DIR_NAME
    return ds.read_index(txt), (model if (model / "config.json").is_file() else None)


@dataclass
class TrainPlan:
    """Everything one training round uses, resolved from flags and env."""

    base_model: str
    new: list[ds.Sample]
    replay: list[ds.Sample]
    output_dir: Path
    config: TrainConfig


def plan_training(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> TrainPlan:
    """Resolve a training round. ``options`` (CLI flags; None = not given) override env."""

    def pick(key: str, name: str, default=None):
        value = options.get(key)
        return value if value is not None else sedna_compat.get_param(name, default, env=env)

    train_url = pick("train_index", "TRAIN_DATASET_URL")
    output = pick("output", "OUTPUT_URL")
    if not train_url:
        raise SednaSamError("no training data: pass --train-index or set TRAIN_DATASET_URL")
    if not output:
        raise SednaSamError("no output directory: pass --output or set OUTPUT_URL")
    original = pick("original_index", "ORIGINAL_DATASET_URL")
    root = ds.sedna_data_root(original)
    new = ds.read_index(train_url, data_root=root)
    initial_done = str(pick("initial_done", "HAS_COMPLETED_INITIAL_TRAINING", "false")).lower() == "true"
    kb_replay, kb_model = _replay_from_kb(pick("kb_index", "CLOUD_KB_INDEX"))

    replay: list[ds.Sample] = list(kb_replay)
    extra = options.get("replay_index") or sedna_compat.split_urls(
        sedna_compat.get_param("REPLAY_DATASET_URL", "", env=env) or ""
    )
    for url in [extra] if isinstance(extra, str) else extra:
        replay += ds.read_index(url, data_root=root)
    if original and options.get("replay_original", True):
        # earlier samples of the Dataset itself: everything in it but this round's and the test split
        test_url = sedna_compat.get_param("TEST_DATASET_URL", env=env)
        held_out = {(s.image, s.label) for s in new}
        if test_url and Path(test_url).is_file():
            held_out |= {(s.image, s.label) for s in ds.read_index(test_url, data_root=root)}
        replay += [s for s in ds.read_index(original, missing_ok=True) if (s.image, s.label) not in held_out]
    new_keys = {(s.image, s.label) for s in new}
    replay = list({(s.image, s.label): s for s in replay if (s.image, s.label) not in new_keys}.values())

    base = options.get("base_model") or sedna_compat.get_param("BASE_MODEL_URL", env=env)
    if not base and kb_model is not None:
        base = str(kb_model)
    if not base and initial_done and (Path(output) / MODEL_DIR_NAME / "config.json").is_file():
        base = str(Path(output) / MODEL_DIR_NAME)
    base = base or DEFAULT_BASE_MODEL

    defaults = TrainConfig()
    config = TrainConfig(
        steps=int(_float("TRAIN_STEPS", _str(pick("steps", "TRAIN_STEPS")), defaults.steps)),
        batch_size=int(_float("BATCH_SIZE", _str(pick("batch_size", "BATCH_SIZE")), defaults.batch_size)),
        lr=_float("LEARNING_RATE", _str(pick("lr", "LEARNING_RATE")), defaults.lr),
        replay_ratio=_float(
            "REPLAY_RATIO", _str(pick("replay_ratio", "REPLAY_RATIO")), defaults.replay_ratio
        ),
        input_size=options.get("input_size"),
        seed=int(options.get("seed") or 0),
        checkpoint_every=int(options.get("checkpoint_every") or defaults.checkpoint_every),
    )
    return TrainPlan(base, new, replay, Path(output), config)


def _str(v) -> str | None:
    return None if v is None else str(v)


def run_train_worker(
    options: Mapping[str, Any], env: Mapping[str, str] | None = None, progress: bool = True
) -> dict:
    """The train worker: plan the round, train (under Sedna's LifelongLearning when the
    lib is present), return the training report."""
    plan = plan_training(options, env)
    log.info(
        "train round: base %s, %d new samples, %d replay samples -> %s",
        plan.base_model,
        len(plan.new),
        len(plan.replay),
        plan.output_dir,
    )
    estimator = SegformerEstimator(
        plan.base_model, plan.config, plan.replay, plan.output_dir, options.get("device"), progress
    )
    if sedna_compat.sedna_available() and sedna_compat.under_sedna(env) and not options.get("no_sedna"):
        return _train_under_sedna(estimator, plan)
    return estimator.train(plan.new)


def _train_under_sedna(estimator: SegformerEstimator, plan: TrainPlan) -> dict:  # pragma: no cover
    """UNTESTED-HERE: needs the kubeedge/sedna lib, which development and CI do not have.

    Sedna's LifelongLearning wraps our estimator, trains it on the round's data source
    and stores the resulting knowledge base (index.pkl under OUTPUT_URL) for the eval
    and deploy workers.
    """
    from sedna.core.lifelong_learning import LifelongLearning  # type: ignore[import-not-found]
    from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

    source = BaseDataSource(data_type="train")
    source.x = np.array([str(s.image) for s in plan.new])
    source.y = np.array([str(s.label) for s in plan.new])
    ll = LifelongLearning(estimator=estimator)
    return {"sedna": str(ll.train(source))}


# ----------------------------------------------------------------------------- eval worker


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, Metrics]]  # model url -> domain -> metrics
    decision: Any = None  # GateDecision when gated


def run_eval_worker(
    options: Mapping[str, Any], env: Mapping[str, str] | None = None, progress: bool = True
) -> EvalResult:
    """The eval worker: every model of MODEL_URLS (and the baseline) on the new-domain
    (TEST_DATASET_URL) and old-domain (OLD_TEST_DATASET_URL) test sets; writes
    ``metrics.json`` under OUTPUT_URL; with ``gate`` also the decision ``gate.json`` and,
    when accepted and a deploy directory is set, publishes the candidate there."""
    from sedna_sam.segformer import load_segformer

    def pick(key: str, name: str, default=None):
        value = options.get(key)
        return value if value is not None else sedna_compat.get_param(name, default, env=env)

    models = options.get("models") or sedna_compat.split_urls(
        sedna_compat.get_param("MODEL_URLS", "", env=env) or ""
    )
    if not models:
        raise SednaSamError("no model to evaluate: pass --model or set MODEL_URLS")
    models = [_model_dir(m) for m in models]
    baseline = pick("baseline", "BASELINE_MODEL_URL")
    test_url = pick("test_index", "TEST_DATASET_URL")
    old_url = pick("old_test_index", "OLD_TEST_DATASET_URL")
    output = Path(pick("output", "OUTPUT_URL", "."))
    if not test_url and not old_url:
        raise SednaSamError("no test data: pass --test-index/--old-test-index or set TEST_DATASET_URL")
    root = ds.sedna_data_root(pick("original_index", "ORIGINAL_DATASET_URL"))
    domains = {
        "new": ds.read_index(test_url, data_root=root) if test_url else [],
        "old": ds.read_index(old_url, data_root=root) if old_url else [],
    }
    all_models = ([_model_dir(baseline)] if baseline else []) + [m for m in models if m != baseline]
    metrics: dict[str, dict[str, Metrics]] = {}
    for url in all_models:
        seg = load_segformer(url, options.get("device"))
        metrics[url] = {d: evaluate_segformer(seg, s, progress) for d, s in domains.items() if s}
        log.info(
            "%s: %s",
            url,
            ", ".join(f"{d} mIoU {m.miou:.4f} ({m.samples} images)" for d, m in metrics[url].items()),
        )
    atomic_write_json(
        output / METRICS_NAME,
        {
            "models": {u: {d: m.to_json() for d, m in per.items()} for u, per in metrics.items()},
            "test_index": test_url,
            "old_test_index": old_url,
            "baseline": baseline,
        },
        indent=2,
    )
    result = EvalResult(metrics)
    if options.get("gate"):
        candidate = models[-1]
        if not baseline:
            if len(models) < 2:
                raise SednaSamError(
                    "the gate needs a baseline: pass --baseline (the deployed model) or set BASELINE_MODEL_URL"
                )
            baseline = models[0]
        policy = GatePolicy(
            min_new_gain=_float("GATE_MIN_NEW_GAIN", _str(pick("min_new_gain", "GATE_MIN_NEW_GAIN")), 0.0),
            max_old_drop=_float("GATE_MAX_OLD_DROP", _str(pick("max_old_drop", "GATE_MAX_OLD_DROP")), 0.02),
            require_old=not options.get("allow_missing_old", False),
        )
        result.decision = gate_from_metrics(metrics[baseline], metrics[candidate], policy)
        deploy_dir = pick("deploy_dir", "DEPLOY_MODEL_DIR")
        published = None
        if result.decision.accept and deploy_dir:
            published = str(publish_copy(Path(candidate), Path(deploy_dir)))
        write_decision(
            output / GATE_NAME,
            result.decision,
            baseline=baseline,
            candidate=candidate,
            published_to=published,
        )
        log.info(
            "gate: %s (%s)",
            "ACCEPT" if result.decision.accept else "REJECT",
            "; ".join(result.decision.reasons),
        )
    return result


def gate_from_metrics(baseline: Mapping[str, Metrics], candidate: Mapping[str, Metrics], policy: GatePolicy):
    def m(per, d):
        return per[d].miou if d in per else None

    return decide(m(baseline, "new"), m(candidate, "new"), m(baseline, "old"), m(candidate, "old"), policy)


def _model_dir(url: str) -> str:
    """A model spec as given, ``file://`` stripped; a file inside a model dir -> the dir."""
    url = url[len("file://") :] if url.startswith("file://") else url
    path = Path(url)
    if path.suffix == ".pkl":
        raise SednaSamError(
            f"{url}: a Sedna knowledge-base index; evaluate the model directory our trainer wrote "
            f"(<OUTPUT_URL>/{MODEL_DIR_NAME}) instead"
        )
    if path.is_file():
        return str(path.parent)
    return url


def publish_copy(model_dir: Path, deploy_dir: Path) -> Path:
    """Copy an accepted model to ``deploy_dir`` atomically (copy beside, then rename), so
    an edge worker watching that directory never loads half a model."""
    import shutil
    import tempfile

    from sedna_sam.lifelong.train import publish_model_dir

    deploy_dir = Path(deploy_dir)
    deploy_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=deploy_dir.parent, prefix=f".{deploy_dir.name}-"))
    os.rmdir(tmp)
    shutil.copytree(model_dir, tmp)
    return publish_model_dir(tmp, deploy_dir)


def summarize(metrics: Mapping[str, Mapping[str, Metrics]]) -> list[tuple[str, str, float, int]]:
    """(model, domain, mIoU, images) rows for a table."""
    return [(u, d, m.miou, m.samples) for u, per in metrics.items() for d, m in per.items()]


__all__: Sequence[str] = (
    "SegformerEstimator",
    "plan_training",
    "run_train_worker",
    "run_eval_worker",
    "gate_from_metrics",
    "publish_copy",
)
