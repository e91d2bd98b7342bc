"""Sedna contract: env names per role, Context-style lookup, secrets redacted, and the
UTD plug-in against a stand-in of Sedna's ClassFactory/BaseDataSource.

The real kubeedge/sedna lib cannot be installed here (it comes from the repository's
lib/ in our Docker images; PyPI's `sedna` is unrelated), so the plug-in test puts a
minimal stand-in with the same names on PYTHONPATH in a subprocess. It checks OUR side
of the contract (registration, constructor and call signature, seen/unseen split); it
does not prove that LifelongLearning.inference works end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from sedna_sam import sedna_compat as sc


def test_role_env_names_match_sednas_contract():
    for role in ("inference", "train", "eval"):
        assert sc.role_env(role).sedna == ("NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "KB_SERVER")
    assert sc.role_env("edge") is sc.role_env("inference")
    inference = sc.role_env("inference").names
    for name in (
        "MODEL_URLS",
        "unseen_save_url",
        "INFERENCE_RESULT_DIR",
        "S3_ENDPOINT_URL",
        "ACCESS_KEY_ID",
        "LOG_LEVEL",
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


def test_without_the_lib_registration_is_a_no_op():
    if sc.sedna_available():  # pragma: no cover - only in the Docker images
        return
    from sedna_sam.edge.worker import register_sedna_plugins

    assert sc.register_utd_plugin("x", object) is False and register_sedna_plugins() is False


STAND_IN = {
    "sedna/__init__.py": "",
    "sedna/common/__init__.py": "",
    "sedna/common/class_factory.py": """
        class ClassType:
            UTD = "unseen_task_detect"
        class ClassFactory:
            __registry__ = {}
            @classmethod
            def register_cls(cls, t_cls, type_name="general", alias=None):
                cls.__registry__.setdefault(type_name, {})[alias or t_cls.__name__] = t_cls
                return t_cls
            @classmethod
            def is_exists(cls, type_name, cls_name=None):
                return type_name in cls.__registry__ and (cls_name is None or cls_name in cls.__registry__[type_name])
            @classmethod
            def get_cls(cls, type_name, t_cls_name=None):
                return cls.__registry__[type_name][t_cls_name]
    """,
    "sedna/datasources/__init__.py": """
        class BaseDataSource:
            def __init__(self, data_type="train", func=None):
                self.data_type, self.x, self.y = data_type, None, None
            def num_examples(self):
                return len(self.x)
    """,
}

PLUGIN_SCRIPT = """
import sys, json
from sedna.common.class_factory import ClassFactory, ClassType
from sedna.datasources import BaseDataSource
from sedna_sam import sedna_compat
from sedna_sam.edge.worker import SegformerEstimator, register_sedna_plugins
from sedna_sam.edge.scorers import SCORERS
from sedna_sam.images import read_image_rgb
assert sedna_compat.sedna_available()
assert register_sedna_plugins() and register_sedna_plugins()  # idempotent
names = sorted(ClassFactory.__registry__[ClassType.UTD])
est = SegformerEstimator("cpu"); est.load(sys.argv[1])
paths = sys.argv[2:]
scores = [SCORERS.create("msp").score(est.logits(read_image_rgb(p))[0]) for p in paths]
thr = sorted(scores)[len(scores) // 2]
plugin = ClassFactory.get_cls(ClassType.UTD, "sedna_sam_msp")("index.pkl", estimator=est, threshold=thr)
data = BaseDataSource(data_type="test"); data.x = [(p,) for p in paths]
seen, unseen = plugin(data)
print(json.dumps({"names": names, "unseen": [x[0] for x in unseen.x], "seen": [x[0] for x in seen.x],
                  "expected_unseen": [p for p, s in zip(paths, scores) if s >= thr]}))
"""


def test_utd_plugin_against_a_sedna_stand_in(tmp_path, tiny_segformer_dir, edge_frames):
    import json

    root = tmp_path / "standin"
    for rel, text in STAND_IN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    frames = edge_frames(tmp_path / "frames", 4, unknown_from=2)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", PLUGIN_SCRIPT, str(tiny_segformer_dir), *map(str, frames)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["names"] == ["sedna_sam_energy", "sedna_sam_entropy", "sedna_sam_lowconf", "sedna_sam_msp"]
    assert result["unseen"] == result["expected_unseen"] and len(result["unseen"]) == 2
    assert sorted(result["seen"] + result["unseen"]) == sorted(map(str, frames))
