"""Focused tests of ``tests/sedna_emulator.py`` itself: the emulated GM/LC/kubelet must do what the
Go code of kubeedge/sedna v0.7.0 does, or the job tests built on it prove nothing. The workers here
are tiny ``python -c`` programs (no models), so the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sedna_emulator import JobStalled, LostMessages, PodCrashLoop, PodStartError, SednaCluster

PYTHON = sys.executable
KB_SERVER = "http://kb.test:9020"

# Shared by the worker programs: report to the LC the way sedna/core/base.py's report_task_info does.
REPORT = """
import json, os, sys, requests

def report(kind, status, results=None):
    worker = os.environ["WORKER_NAME"]
    body = {"name": worker, "namespace": os.environ["NAMESPACE"], "ownerName": os.environ["JOB_NAME"],
            "ownerKind": "lifelonglearningjob", "kind": kind, "status": status}
    if results is not None:
        body["results"] = results
    response = requests.post(f"{os.environ['LC_SERVER']}/sedna/workers/{worker}/info", json=body, timeout=10)
    print("report", response.status_code, response.text, flush=True)
    assert response.status_code == 200, response.text

def host(path):
    # what Sedna's model_info(relpath=DATA_PATH_PREFIX) reports: the host path
    prefix = os.environ["DATA_PATH_PREFIX"]
    return path[len(prefix):] if path.startswith(prefix) else path
"""

TRAIN = (
    REPORT
    + """
out = os.environ["OUTPUT_URL"]
os.makedirs(out, exist_ok=True)
model = os.path.join(out, "index.pkl")
with open(model, "wb") as handle:
    handle.write(b"model of " + out.encode())
report("train", "completed", [{"format": "pkl", "url": host(model), "classes": ["road"]}])
"""
)

EVAL_ACCEPT = (
    REPORT
    + """
model = os.environ["MODEL_URLS"].split(";")[0]
open(model, "rb").read()
open(os.environ["TEST_DATASET_URL"]).read()
report("eval", "completed", [{"format": "pkl", "url": host(model), "metrics": {"mIoU": [0.5]}}])
"""
)

EVAL_REJECT = REPORT + '\nreport("eval", "completed", [])\n'

INFER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("serving", open(os.environ["MODEL_URLS"], "rb").read(), flush=True)
while True:
    time.sleep(0.05)
"""


@dataclass
class Layout:
    root: Path
    data: Path
    dataset: Path
    out: Path


@pytest.fixture
def layout() -> Iterator[Layout]:
    root = Path(tempfile.mkdtemp(prefix="sedna-emu-"))
    root.chmod(0o755)  # pods run as other users: root must be traversable
    data = root / "data"
    (data / "dataset").mkdir(parents=True)
    for directory in (data, data / "dataset"):
        directory.chmod(0o755)
    yield Layout(root, data, data / "dataset" / "index.txt", data / "lifelong")
    shutil.rmtree(root, ignore_errors=True)


def template(code: str, *, env: dict[str, str] | None = None, command: str = PYTHON, **spec: Any) -> dict:
    container = {
        "name": "worker",
        "command": [command, "-c", code],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "volumeMounts": spec.pop("volumeMounts", []),
    }
    container.update(spec.pop("container", {}))
    return {"spec": {"nodeName": "node-a", "containers": [container], **spec}}


def make_objects(
    layout: Layout,
    *,
    train: dict,
    evaluate: dict | None = None,
    deploy: dict | None = None,
    threshold: int = 5,
) -> tuple[dict, dict]:
    job = {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": "job1", "namespace": "ns1"},
        "spec": {
            "dataset": {"name": "ds1", "trainProb": 0.8},
            "outputDir": str(layout.out),
            "trainSpec": {
                "template": train,
                "trigger": {
                    "checkPeriodSeconds": 60,
                    "timer": {"start": "00:00", "end": "24:00"},
                    "condition": {"operator": ">", "threshold": threshold, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": evaluate or template(EVAL_REJECT)},
            "deploySpec": {"template": deploy or template(INFER)},
        },
    }
    dataset = {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "ds1", "namespace": "ns1"},
        "spec": {"url": str(layout.dataset), "format": "txt", "nodeName": "node-a"},
    }
    return job, dataset


def append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a") as handle:
        handle.writelines(line + "\n" for line in lines)
    path.chmod(0o644)


def stage_type(cluster: SednaCluster) -> tuple[str, str]:
    latest = cluster.latest_condition
    assert latest is not None
    return latest["stage"], latest["type"]


def post(cluster: SednaCluster, worker: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{cluster.lc_server_url}/sedna/workers/{worker}/info", json=body, timeout=10, **kwargs
    )


def report_body(worker: str, **fields: Any) -> dict:
    body = {"name": worker, "namespace": "ns1", "ownerName": "job1", "ownerKind": "lifelonglearningjob"}
    body.update(fields)
    return body


def test_train_eval_split_and_duplicate_eval_lines(layout: Layout) -> None:
    """handleData: int(0.8 * new) lines to train, the rest a new eval version, and every version is
    re-appended to the eval samples on each growth (so the eval file repeats lines)."""
    lines = [f"img{i}.png lbl{i}.png" for i in range(15)]
    lines[3] = ""  # GetSamples keeps blank lines: they count as samples
    job, dataset = make_objects(layout, train=template(TRAIN))
    append_lines(layout.dataset, lines[:10])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        pods = cluster.advance()
        assert [p.worker_type for p in pods] == ["train"], cluster.describe()
        assert (layout.out / "data/train/1/data.txt").read_text().splitlines() == lines[:8]
        assert stage_type(cluster) == ("Eval", "Waiting")

        append_lines(layout.dataset, lines[10:])
        pods = cluster.advance()
        assert [p.worker_type for p in pods] == ["eval"], cluster.describe()
        eval_lines = (layout.out / "data/eval/1/data.txt").read_text().splitlines()
        assert eval_lines == lines[8:10] + lines[8:10] + lines[14:15]
        assert cluster.lc_samples["train_samples"] == lines[10:14]
        mode = (layout.out / "data/eval/1").stat().st_mode & 0o777
        assert mode == 0o755
        cluster.assert_no_lost_messages()


def test_env_and_mounts_of_train_eval_inference_and_round_two(layout: Layout) -> None:
    """The env and mounts GM gives each pod (createPod/createInferPod + injectWorkerParam)."""
    venv_bin = os.path.dirname(PYTHON)
    ours = {"LC_SERVER": "http://overridden.by.gm:1", "CACHE_DIR": "/cache/hf"}
    cache = {
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "volumes": [{"name": "cache", "emptyDir": {}}],
    }
    job, dataset = make_objects(
        layout,
        train=template(TRAIN, env=ours, command="python", **cache),
        evaluate=template(EVAL_ACCEPT),
        deploy=template(INFER),
    )
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    extra_env = {"PATH": f"{venv_bin}:/usr/bin:/bin"}
    with SednaCluster(layout.root, job, dataset, KB_SERVER, extra_env) as cluster:
        prefix = str(cluster.prefix)
        out = str(layout.out)
        (train,) = cluster.advance()
        env = train.env
        assert env["TRAIN_DATASET_URL"] == f"{prefix}{out}/data/train/1/data.txt"
        assert env["OUTPUT_URL"] == f"{prefix}{out}/train/1"
        assert env["ORIGINAL_DATASET_URL"] == f"{prefix}{layout.dataset}"
        assert env["DATA_PATH_PREFIX"] == prefix
        assert env["HAS_COMPLETED_INITIAL_TRAINING"] == "false"
        assert "CLOUD_KB_INDEX" not in env
        assert env["KB_SERVER"] == KB_SERVER
        assert env["LC_SERVER"] == cluster.lc_server_url  # GM's env comes after the template's
        assert env["NAMESPACE"] == "ns1" and env["JOB_NAME"] == "job1"
        assert env["WORKER_NAME"].startswith("train-worker-")
        assert env["CACHE_DIR"] == str(train.dir / "volumes" / "cache" / "hf")
        assert train.argv[0] == shutil.which("python", path=extra_env["PATH"])
        spec = train.spec["spec"]
        assert spec["restartPolicy"] == "OnFailure" and spec["hostNetwork"] is True
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        gm_volumes = {
            v["hostPath"]["path"]: v["hostPath"]["type"] for v in spec["volumes"] if "hostPath" in v
        }
        assert gm_volumes == {
            f"{out}/train/": "Directory",
            f"{out}/data/train/1/": "Directory",
            f"{layout.dataset.parent}/": "Directory",
        }
        mount_paths = {m["mountPath"] for m in train.container["volumeMounts"]}
        assert mount_paths == {
            "/cache",
            f"{prefix}{out}/train/",
            f"{prefix}{out}/data/train/1/",
            f"{prefix}{layout.dataset.parent}/",
        }
        names = [e["name"] for e in train.container["env"]]
        assert names.index("CACHE_DIR") < names.index("DATA_PATH_PREFIX") < names.index("TRAIN_DATASET_URL")

        (evaluate,) = cluster.advance()
        model_url = f"{out}/train/1/index.pkl"
        assert evaluate.env["MODEL_URLS"] == prefix + model_url
        assert evaluate.env["TEST_DATASET_URL"] == f"{prefix}{out}/data/eval/1/data.txt"
        assert evaluate.env["OUTPUT_URL"] == f"{prefix}{out}/eval/1"
        assert evaluate.env["KB_SERVER"] == KB_SERVER
        assert evaluate.spec["spec"]["restartPolicy"] == "OnFailure"

        (infer,) = cluster.advance()
        assert infer.env["MODEL_URLS"] == f"{prefix}{out}/deploy/index.pkl"
        assert "KB_SERVER" not in infer.env
        assert infer.env["OUTPUT_URL"] == out  # createInferPod: the raw outputDir, not mounted
        assert infer.env["WORKER_NAME"].startswith("inferworker-")
        assert infer.spec["spec"]["restartPolicy"] == "Always"
        assert (layout.out / "deploy/index.pkl").read_bytes() == f"model of {prefix}{out}/train/1".encode()
        assert stage_type(cluster) == ("Train", "Waiting")
        assert infer.phase == "Running"

        append_lines(layout.dataset, [f"b{i}" for i in range(10)])
        (train2,) = cluster.advance()
        assert train2.env["HAS_COMPLETED_INITIAL_TRAINING"] == "true"
        assert train2.env["CLOUD_KB_INDEX"] == model_url  # as reported: no prefix
        assert train2.env["TRAIN_DATASET_URL"] == f"{prefix}{out}/data/train/2/data.txt"
        assert train2.env["OUTPUT_URL"] == f"{prefix}{out}/train/2"

        took = cluster.stop_pod(infer, grace_s=10)
        assert took < 5 and not infer.sigkilled
        cluster.assert_no_lost_messages()


def test_lc_server_rejects_bad_bodies_and_drops_unknown_owner_kind(layout: Layout) -> None:
    """server.go: messageHandler -- a body that does not decode into MessageContent or names another
    worker is a 400; an ownerKind without a feature manager is silently accepted and dropped."""
    job, dataset = make_objects(layout, train=template(TRAIN))
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        response = post(cluster, "w1", report_body("w1", kind="train", status=3))
        assert response.status_code == 400
        assert response.json() == {
            "Status": 400,
            "Message": "read worker(name=w1) message body failed, error: json: cannot unmarshal number into "
            "Go struct field MessageContent.status of type string",
        }
        response = post(cluster, "w1", report_body("w1", kind="train", status="completed", results=["x"]))
        assert response.status_code == 400
        assert (
            "cannot unmarshal string into Go struct field MessageContent.results"
            in response.json()["Message"]
        )
        response = post(cluster, "w1", report_body("w2", kind="train", status="completed"))
        assert response.status_code == 400
        assert response.json()["Message"] == (
            "worker name(name=w1) in the api is different from that(name=w2) in the message body"
        )
        response = requests.post(f"{cluster.lc_server_url}/sedna/workers/w1/info", data=b"{}", timeout=10)
        assert response.status_code == 415  # no Content-Type: go-restful's route does not match

        body = report_body("w1", kind="train", status="completed")
        body["ownerKind"] = "LifelongLearningJob"
        response = post(cluster, "w1", body)
        assert response.status_code == 200 and response.json() == {"Status": 200, "Message": "OK"}
        assert cluster.messages[-1].outcome == "dropped"
        assert [m.http_status for m in cluster.messages] == [400, 400, 400, 415, 200]
        with pytest.raises(LostMessages, match="no feature manager"):
            cluster.assert_no_lost_messages()


def test_omitempty_drops_empty_results_and_the_eval_stalls(layout: Layout) -> None:
    """upstream.go: updateFromEdge re-marshals ConditionData, so ``results: []`` becomes
    ``{"output":{}}``; the LC then finds no train model and the job stalls at Eval/Waiting. A result
    that does not decode into runtime.Model makes GM drop the whole report."""
    job, dataset = make_objects(layout, train=template(TRAIN))
    append_lines(layout.dataset, ["a"])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        assert post(cluster, "w1", report_body("w1", kind="train", status="completed", results=[])).ok
        bad = [{"format": "pkl", "url": "/m", "number_of_labeled_unseen_sample": 1.0}]
        assert post(cluster, "w2", report_body("w2", kind="train", status="completed", results=bad)).ok
        with pytest.raises(JobStalled, match="model is nil"):
            cluster.tick()
        accepted, lost = cluster.messages
        assert accepted.outcome == "accepted"
        assert accepted.condition is not None
        assert accepted.condition["data"] == '{"output":{}}'
        assert (accepted.condition["stage"], accepted.condition["type"]) == ("Train", "Completed")
        assert lost.outcome == "gm error"
        assert lost.reason == (
            "json: cannot unmarshal number 1.0 into Go struct field "
            "Model.output.models.number_of_labeled_unseen_sample of type int"
        )
        assert stage_type(cluster) == ("Eval", "Waiting")


PROBE = """
import json, os
results = {}
def attempt(label, action):
    try:
        action()
        results[label] = "ok"
    except PermissionError as exc:
        results[label] = "denied: " + str(exc)
attempt("unmounted", lambda: open(os.environ["SECRET"]).read())
attempt("dataset_via_prefix", lambda: open(os.environ["ORIGINAL_DATASET_URL"]).read())
attempt("dataset_host_path", lambda: open(os.environ["DATASET_HOST"]).read())
attempt("readonly_list", lambda: os.listdir(os.environ["SHARED"]))
attempt("readonly_write", lambda: open(os.environ["SHARED"] + "/new", "w"))
attempt("cache_literal", lambda: open("/cache/x", "w"))
attempt("cache_env", lambda: open(os.environ["CACHE"] + "/x", "w").close())
print("RESULTS " + json.dumps(results))
"""


def test_audit_hook_refuses_what_the_pod_does_not_mount(layout: Layout) -> None:
    secret = layout.data / "secret.txt"
    secret.write_text("not for pods")
    shared = layout.data / "shared"
    shared.mkdir(mode=0o755)
    env = {
        "SECRET": str(secret),
        "DATASET_HOST": str(layout.dataset),
        "SHARED": str(shared),
        "CACHE": "/cache",
    }
    train = template(
        PROBE,
        env=env,
        volumeMounts=[
            {"name": "shared", "mountPath": str(shared), "readOnly": True},
            {"name": "cache", "mountPath": "/cache"},
        ],
        volumes=[
            {"name": "shared", "hostPath": {"path": str(shared), "type": "Directory"}},
            {"name": "cache", "emptyDir": {}},
        ],
    )
    job, dataset = make_objects(layout, train=train)
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        (pod,) = cluster.advance()
        line = next(x for x in pod.log_path.read_text().splitlines() if x.startswith("RESULTS "))
        results = json.loads(line[len("RESULTS ") :])
        assert results["unmounted"].startswith(f"denied: {secret}: not mounted in pod {pod.name} (mounts: ")
        assert results["dataset_via_prefix"] == "ok"
        assert results["dataset_host_path"].startswith("denied:")
        assert results["readonly_list"] == "ok"
        assert "read-only mount" in results["readonly_write"]
        assert "used literally" in results["cache_literal"]
        assert results["cache_env"] == "ok"


FLAKY = (
    TRAIN
    + """
"""
).replace(
    'out = os.environ["OUTPUT_URL"]',
    'marker = os.environ["MARKER"]\n'
    "if not os.path.exists(marker):\n"
    "    open(marker, 'w').close()\n"
    "    sys.exit(1)\n"
    'out = os.environ["OUTPUT_URL"]',
)


def test_on_failure_restarts_in_the_same_pod(layout: Layout) -> None:
    """OnFailure: a non-zero exit restarts the container in the same pod (emptyDir kept)."""
    train = template(
        FLAKY,
        env={"MARKER": "/cache/marker"},
        volumeMounts=[{"name": "cache", "mountPath": "/cache"}],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    job, dataset = make_objects(layout, train=train)
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        (pod,) = cluster.advance()
        assert (pod.phase, pod.restarts, pod.exit_codes) == ("Succeeded", 1, [1, 0])
        assert stage_type(cluster) == ("Eval", "Waiting")


def test_crash_loop_raises_with_the_log(layout: Layout) -> None:
    job, dataset = make_objects(layout, train=template("import sys; print('boom'); sys.exit(3)"))
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER, max_restarts=2) as cluster:
        with pytest.raises(PodCrashLoop, match="restart it forever") as caught:
            cluster.advance()
        assert "boom" in str(caught.value)
        (pod,) = cluster.pods
        assert pod.restarts == 2 and pod.exit_codes == [3, 3, 3]


UID_PROBE = """
import os
print("uid", os.getuid(), "gid", os.getgid(), "groups", os.getgroups(), flush=True)
print("cache", open("/cache/from-init".replace("/cache", os.environ["CACHE"])).read(), flush=True)
try:
    os.makedirs(os.environ["OUTPUT_URL"])
    print("mkdir ok")
except PermissionError as exc:
    print("mkdir PermissionError", exc.errno)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_pod_runs_as_its_uid_and_cannot_write_into_root_created_dirs(layout: Layout) -> None:
    init = {
        "name": "init",
        "command": [
            PYTHON,
            "-c",
            "open('/cache/from-init'.replace('/cache', __import__('os').environ['C']), 'w')",
        ],
        "env": [{"name": "C", "value": "/cache"}],
        "securityContext": {"runAsUser": 0},
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    }
    train = template(
        UID_PROBE,
        env={"CACHE": "/cache"},
        volumeMounts=[{"name": "cache", "mountPath": "/cache"}],
        volumes=[{"name": "cache", "emptyDir": {}}],
        initContainers=[init],
        securityContext={"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
    )
    job, dataset = make_objects(layout, train=train)
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        assert cluster.emulates_users
        (pod,) = cluster.advance()
        log = pod.log_path.read_text()
        assert "uid 10001 gid 10001 groups [10001]" in log
        assert "cache " in log
        assert "mkdir PermissionError 13" in log
        train_dir = (layout.out / "train").stat()
        assert (train_dir.st_uid, train_dir.st_mode & 0o777) == (0, 0o755)


def test_run_as_non_root_refuses_a_uid_0_init_container(layout: Layout) -> None:
    """runAsNonRoot in the pod's securityContext also applies to init containers."""
    init = {"name": "init", "command": [PYTHON, "-c", "pass"], "securityContext": {"runAsUser": 0}}
    train = template(TRAIN, initContainers=[init], securityContext={"runAsNonRoot": True, "runAsUser": 10001})
    job, dataset = make_objects(layout, train=train)
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        with pytest.raises(PodStartError, match="breaks non-root policy"):
            cluster.advance()


def test_an_image_path_under_an_emptydir_mount_is_hidden_and_the_error_says_so(layout: Layout) -> None:
    """The image's PATH entry under a template's emptyDir mountPath is not found in the pod,
    as in a container, and the start error names the entry and the mount as the reason."""
    cache = {
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "volumes": [{"name": "cache", "emptyDir": {}}],
    }
    job, dataset = make_objects(layout, train=template(TRAIN, command="python", **cache))
    append_lines(layout.dataset, [f"a{i}" for i in range(10)])
    with SednaCluster(layout.root, job, dataset, KB_SERVER, {"PATH": "/cache/venv/bin"}) as cluster:
        with pytest.raises(PodStartError, match=r"\['/cache/venv/bin'\] lie under an emptyDir mountPath"):
            cluster.advance()


def test_inference_pod_needs_the_deploy_dir_and_is_killed_after_its_grace(layout: Layout) -> None:
    """createInferPod mounts <outputDir>/deploy/ as type Directory (LC creates it on the first
    deploy); a pod that ignores SIGTERM is SIGKILLed after the grace period."""
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('sig' + 'term ignored', flush=True)\ntime.sleep(60)"
    job, dataset = make_objects(layout, train=template(TRAIN), deploy=template(stubborn))
    with SednaCluster(layout.root, job, dataset, KB_SERVER) as cluster:
        with pytest.raises(PodStartError, match="deploy/ is not a directory"):
            cluster.run_pod("Deploy")
        (layout.out / "deploy").mkdir()
        pod = cluster.run_pod("Deploy")
        deadline = time.monotonic() + 10
        while "sigterm ignored" not in pod.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        took = cluster.stop_pod(pod, grace_s=0.5)
        assert pod.sigkilled and 0.5 <= took < 5
        assert pod.exit_codes == [137]
