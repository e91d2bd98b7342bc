"""Sedna contract: env names per role, Context-style lookup, secrets redacted, and our
plug-ins inside kubeedge/sedna's real lib (installed from its lib/ by
scripts/install-sedna-lib.sh; CI fails when it is missing): registration in its
ClassFactory, the corner-case recognition plug-in splitting real frames, the single task
definition/allocation, and the env defaults the lib needs.

The whole LifelongLearningJob (train -> eval -> deploy -> round 2) runs in
tests/test_sedna_job.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sedna_sam import sedna_compat as sc
from sedna_sam.errors import SednaSamError
from sedna_sam.sedna_lib import sedna_available


def test_role_env_names_match_sednas_contract():
    for role in ("train", "eval"):
        assert sc.role_env(role).sedna == ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "KB_SERVER")
    # createInferPod gives inference workers no KB_SERVER
    assert sc.role_env("inference").sedna == ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER")
    assert sc.role_env("edge") is sc.role_env("inference")
    inference = sc.role_env("inference").names
    for name in (
        "MODEL_URLS",
        "unseen_save_url",
        "INFERENCE_RESULT_DIR",
        "S3_ENDPOINT_URL",
        "ACCESS_KEY_ID",
        "LOG_LEVEL",
        "edge_output_url",
    ):
        assert name in inference
    train = sc.role_env("train").names
    for name in (
        "TRAIN_DATASET_URL",
        "ORIGINAL_DATASET_URL",
        "OUTPUT_URL",
        "HAS_COMPLETED_INITIAL_TRAINING",
        "CLOUD_KB_INDEX",
    ):
        assert name in train
    assert set(sc.role_env("eval").required) == {"MODEL_URLS", "TEST_DATASET_URL", "OUTPUT_URL"}
    assert all(name in sc.ENV for r in sc.ROLE_ENV.values() for name in r.names)


def test_get_param_reads_like_sedna_context():
    env = {"UNSEEN_SAVE_URL": "/data/u", "MODEL_URLS": "", "LOG_LEVEL": "DEBUG"}
    assert sc.get_param("unseen_save_url", env=env) == "/data/u"  # as given, then upper-cased
    assert sc.get_param("MODEL_URLS", "dflt", env=env) == "dflt"  # empty = unset
    assert sc.missing_env("edge", env) == ["NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "MODEL_URLS"]
    assert not sc.under_sedna(env) and sc.under_sedna({"JOB_NAME": "j", "WORKER_NAME": "w"})
    assert sc.split_urls("a; b,c") == ["a", "b", "c"]
    assert sc.node_name({"NODE_NAME": "edge-3"}) == "edge-3" and sc.node_name({})
    assert sc.model_poll_seconds({"MODEL_POLL_PERIOD_SECONDS": "0"}) == 30.0
    assert sc.model_poll_seconds({"MODEL_POLL_PERIOD_SECONDS": "5"}) == 5.0


def test_secrets_are_redacted():
    env = {"ACCESS_KEY_ID": "AKIA123", "SECRET_ACCESS_KEY": "s3cr3t", "JOB_NAME": "job"}
    values = sc.read_role_env("inference", env)
    assert values["SECRET_ACCESS_KEY"] == "s3cr3t"
    shown = sc.redacted(values)
    assert "s3cr3t" not in repr(shown) and "AKIA123" not in repr(shown) and shown["JOB_NAME"] == "job"


def test_the_lib_is_kubeedge_sednas():
    assert sedna_available(), "kubeedge/sedna's lib is not installed: run scripts/install.sh"
    import sedna.core.lifelong_learning  # noqa: F401  (PyPI's unrelated 'sedna' has no core/)


def test_plugins_register_in_sednas_class_factory():
    from sedna.common.class_factory import ClassFactory, ClassType

    from sedna_sam.edge.scorers import SCORERS
    from sedna_sam.sedna_job import plugins

    plugins.register_all()
    assert plugins.register_all() == []  # idempotent
    assert ClassFactory.get_cls(ClassType.STP, plugins.TASK_DEFINITION) is plugins.SingleTaskDefinition
    assert ClassFactory.get_cls(ClassType.STP, plugins.TASK_ALLOCATION) is plugins.SingleTaskAllocation
    assert ClassFactory.get_cls(ClassType.KM, plugins.UPDATE_DECISION) is plugins.FinetuneUpdateDecision
    assert ClassFactory.get_cls(ClassType.UTD, plugins.RE_RECOGNITION) is plugins.AllSeenReRecognition
    for alias in [plugins.CALIBRATED_RECOGNITION] + [plugins.utd_alias(n) for n in SCORERS.names()]:
        assert ClassFactory.is_exists(ClassType.UTD, alias), alias


def test_single_task_definition_allocation_and_all_seen():
    from sedna.datasources import BaseDataSource

    from sedna_sam.sedna_job import plugins

    data = BaseDataSource(data_type="train")
    data.x, data.y = np.array(["a.png", "b.png", "c.png"]), np.array(["a_L.png", "b_L.png", "c_L.png"])
    tasks, extractor, samples = plugins.SingleTaskDefinition()(data, model=None)
    (task,) = tasks
    assert samples is data and task.samples is data and extractor == {task.entry: 0}
    assert (
        task.entry.startswith("segformer-") and task.entry != plugins.SingleTaskDefinition()(data)[0][0].entry
    )
    assert plugins.SingleTaskAllocation(extractor)(data)[1] == [0, 0, 0]
    seen, unseen = plugins.AllSeenReRecognition(None)(data)
    assert seen is data and len(unseen.x) == 0
    assert list(np.concatenate((seen.x, unseen.x))) == ["a.png", "b.png", "c.png"]  # what the lib does next


def test_recognition_plugin_splits_real_frames(tmp_path, tiny_segformer_dir, edge_frames):
    from sedna.common.class_factory import ClassFactory, ClassType
    from sedna.datasources import BaseDataSource

    from sedna_sam.edge.scorers import SCORERS
    from sedna_sam.edge.sedna_inference import EdgeEstimator
    from sedna_sam.images import read_image_rgb
    from sedna_sam.model_files import pack_model
    from sedna_sam.sedna_job import plugins

    plugins.register_all()
    frames = edge_frames(tmp_path / "frames", 4, unknown_from=2)
    est = EdgeEstimator("cpu")
    est.load(str(pack_model(tiny_segformer_dir, tmp_path / "seg.model")))
    scores = [SCORERS.create("msp").score(est.frame_logits((str(p),))[0]) for p in frames]
    thr = sorted(scores)[len(scores) // 2]
    plugin = ClassFactory.get_cls(ClassType.UTD, "sedna_sam_msp")("index.pkl", estimator=est, threshold=thr)
    data = BaseDataSource(data_type="test")
    data.x = [(str(p),) for p in frames]
    seen, unseen = plugin(data)
    assert [x[0] for x in unseen.x] == [str(p) for p, s in zip(frames, scores) if s >= thr]
    assert sorted(x[0] for x in seen.x + unseen.x) == sorted(map(str, frames)) and len(unseen.x) == 2
    assert est.scores == {str(p): pytest.approx(s) for p, s in zip(frames, scores)}
    # the prediction reuses the logits of the frame the plug-in scored last, at the frame's size
    (ids,) = est.predict(np.array([(str(frames[-1]),)]))
    assert ids.shape == read_image_rgb(frames[-1]).shape[:2]
    # a plug-in without our estimator says what it needs
    with pytest.raises(SednaSamError, match="edge estimator"):
        ClassFactory.get_cls(ClassType.UTD, "sedna_sam")("index.pkl", estimator=object())


def test_env_defaults_for_the_lib(tmp_path):
    from sedna_sam.sedna_job import runtime

    env = {"edge_output_url": str(tmp_path / "kb")}
    assert runtime.prepare_env("train", env) == {"BACKEND_TYPE": "PYTORCH", "MIN_TRAIN_SAMPLE": "1"}
    assert (tmp_path / "kb" / "unseen_samples").is_dir()
    with pytest.raises(SednaSamError, match="does nothing"):
        runtime.prepare_env("train", {"BACKEND_TYPE": "TORCH"})
    with pytest.raises(SednaSamError, match="tensorflow"):
        runtime.prepare_env("train", {"BACKEND_TYPE": "tensorflow"})
    (tmp_path / "file").write_text("")
    with pytest.raises(SednaSamError, match="edge_output_url.*writable volume"):
        runtime.prepare_env("inference", {"edge_output_url": str(tmp_path / "file" / "kb")})
    env = {}
    runtime.prepare_env("eval", env)
    assert env["edge_output_url"].endswith("sedna-sam-kb-eval")
