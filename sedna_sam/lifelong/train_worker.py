"""The train worker: typed options, one round planned from flags over Sedna's env, trained.

Each option left ``None`` is read from the env name in brackets beside it
(:mod:`sedna_sam.lifelong.worker_env`); under Sedna's lib the round goes through
:func:`sedna_sam.lifelong.sedna_worker.train_under_sedna`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sedna_sam import sedna_compat
from sedna_sam.errors import SednaSamError
from sedna_sam.lifelong import data as ds
from sedna_sam.lifelong.estimator import DEFAULT_BASE_MODEL, SegformerEstimator
from sedna_sam.lifelong.train import MODEL_DIR_NAME, REPLAY_INDEX_NAME, TrainConfig
from sedna_sam.lifelong.worker_env import FromEnv, env_float, is_remote, upload_outputs, use_sedna_lib
from sedna_sam.storage import local_path

log = logging.getLogger(__name__)


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
    pick = FromEnv(env)
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
