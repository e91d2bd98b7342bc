"""Our LifelongLearningJob run the way Sedna runs it, through kubeedge/sedna's own lib.

The job is our manifests (overlay ``single-node-demo``'s objects, re-rendered with
``kubectl kustomize`` for host paths under a temporary root), driven by
``tests/sedna_emulator.py``: an emulation of what Sedna v0.7.0's global manager (GM),
local controller (LC) and kubelet do for one job, written from the Go source, with our
real workers as the pods' processes (the containers' commands of the manifests), Sedna's
real Python lib inside them (installed from its lib/ by scripts/install-sedna-lib.sh) and
Sedna's real knowledge-base server (its own venv, ``sedna_kb_server``).

What each step relies on in the Go code (github.com/kubeedge/sedna at v0.7.0):

- LC creates ``<outputDir>/{data/train,data/eval,train,eval}`` as root 0755
  (pkg/localcontroller/managers/lifelonglearning/lifelonglearningjob.go: createOutputDir);
  our ``init-dirs`` init container hands ``train``/``eval`` to uid 10001, the workers run as
  10001 (pkg/globalmanager/runtime/worker.go: injectWorkerParam keeps the template's
  securityContext).
- LC splits every growth of the Dataset index into ``int(trainProb * new)`` train lines and
  the rest eval lines, eval lines of earlier rounds repeated (lifelonglearningjob.go:
  handleData), writes ``data/{train,eval}/<round>/data.txt`` (writeSamples) and triggers
  training when the train lines pass the threshold (triggerTrainTask,
  pkg/localcontroller/trigger).
- GM creates each pod with env NAMESPACE, JOB_NAME, WORKER_NAME, LC_SERVER, KB_SERVER,
  HAS_COMPLETED_INITIAL_TRAINING, CLOUD_KB_INDEX (round 2, a host path without the prefix)
  and the URLs rewritten to ``/home/data/<url>`` with only each parent directory mounted
  (pkg/globalmanager/controllers/lifelonglearning/lifelonglearningjob.go: createPod,
  getCloudKBIndex; pkg/globalmanager/runtime/storage_initializer_injector.go:
  MountURL.parseHostPath, PrepareStorage), restartPolicy OnFailure and hostNetwork.
- Workers report to ``POST {LC_SERVER}/sedna/workers/{name}/info``; the body must decode
  into MessageContent (pkg/localcontroller/server/server.go: messageHandler,
  pkg/localcontroller/worker/worker.go), the LC forwards it by job and kind
  (lifelonglearningjob.go: monitorWorker) and GM turns it into a condition whose data must
  decode into ConditionData/runtime.Model (pkg/globalmanager/controllers/lifelonglearning/
  upstream.go: updateFromEdge; pkg/globalmanager/runtime/types.go).
- Eval gets the train report's model URLs as MODEL_URLS (lifelonglearningjob.go:
  triggerEvalTask, createPod); LC deploys the first model URL of eval's report to
  ``<outputDir>/deploy/index.pkl``, or nothing when the report has none (deployTask,
  updateDeployModelFile); GM (re)starts the inference pod with
  ``MODEL_URLS=/home/data/<outputDir>/deploy/index.pkl`` and no KB_SERVER (createInferPod,
  restartInferPod).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sedna_emulator import SednaCluster

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
WORKER_UID = 10001

pytestmark = pytest.mark.slow


@dataclass
class Host:
    """The emulated node's host paths (all under ``root``)."""

    root: Path
    data_root: Path
    dataset: Path  # the Dataset's txt index
    old_test: Path
    base_model: Path
    edge_root: Path
    frames: Path
    store: Path
    output: Path  # the job's outputDir


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: install Debian's `kubectl` package (scripts/install.sh does)")
    return path


def render_job(host: Host, overlay_dir: Path) -> tuple[dict, dict]:
    """Our manifests through kustomize, with settings for ``host`` and the test's knobs
    (tiny training, a strict gate for round 2, every frame flagged): a user's overlay."""
    settings = yaml.safe_load((MANIFESTS / "overlays/single-node-demo/settings.yaml").read_text())
    settings.update(
        cloudNode="node-a",
        edgeNode="node-a",
        dataRoot=str(host.data_root),
        datasetUrl=str(host.dataset),
        edgeDataRoot=str(host.edge_root),
        edgeSource=str(host.frames),
        storeUrl=str(host.store),
        baseModel=str(host.base_model),
        oldTestIndex=str(host.old_test),
        outputDir=str(host.output),
        trainProb=0.8,
        trigger={"threshold": 5, "checkPeriodSeconds": 1, "start": "00:00", "end": "24:00"},
    )
    overlay_dir.mkdir(parents=True)
    (overlay_dir / "settings.yaml").write_text(yaml.safe_dump(settings))

    def env(part: str, name: str, value: str) -> dict:
        path = f"/spec/{part}/template/spec/containers/0/env/-"
        return {"op": "add", "path": path, "value": {"name": name, "value": value}}

    patch = [
        {"op": "remove", "path": f"/spec/{part}/template/spec/containers/0/resources/{kind}/nvidia.com~1gpu"}
        for part in ("trainSpec", "evalSpec")
        for kind in ("requests", "limits")
    ] + [
        env("trainSpec", "TRAIN_STEPS", "4"),
        env("trainSpec", "BATCH_SIZE", "2"),
        # round 1 has nothing deployed to compare with (accepted); round 2 must gain a whole
        # mIoU point over round 1's model on the new domain: impossible, so it is rejected
        env("evalSpec", "GATE_MIN_NEW_GAIN", "1.0"),
        {"op": "add", "path": "/spec/deploySpec/template/spec/containers/0/args/-", "value": "--threshold"},
        {"op": "add", "path": "/spec/deploySpec/template/spec/containers/0/args/-", "value": "0"},
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "sedna-sam-test",
        "resources": [os.path.relpath(MANIFESTS / "base", overlay_dir), "settings.yaml"],
        "components": [os.path.relpath(MANIFESTS / "components/settings", overlay_dir)],
        "patches": [
            {"target": {"kind": "LifelongLearningJob", "name": "sedna-sam"}, "patch": yaml.safe_dump(patch)}
        ],
    }
    (overlay_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = subprocess.run(
        [kubectl(), "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    job = next(d for d in docs if d["kind"] == "LifelongLearningJob")
    dataset = next(d for d in docs if d["kind"] == "Dataset")
    return job, dataset


def add_samples(host: Host, domain: str, seeds: range) -> None:
    """Labelled samples into the Dataset index, as the annotation service appends them."""
    from fixtures_lifelong import render_domain

    from sedna_sam.labels import cityscapes
    from sedna_sam.lifelong.data import append_index_lines

    pairs = render_domain(host.dataset.parent, domain, seeds, cityscapes())
    append_index_lines(host.dataset, pairs)
    for p in host.dataset.parent.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    from fixtures_edge import write_frames
    from fixtures_lifelong import render_domain

    from sedna_sam.labels import cityscapes
    from sedna_sam.lifelong.data import write_index
    from sedna_sam.segformer import build_tiny_segformer

    # Not under /tmp: the templates mount an emptyDir at /tmp, and the emulator rewrites
    # every env value under an emptyDir mountPath to the pod's private directory.
    root = Path(tempfile.mkdtemp(prefix="sedna-job-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    root.chmod(0o755)  # the pods run as uid 10001
    data_root = root / "data" / "var" / "lib" / "sedna-sam"
    h = Host(
        root,
        data_root,
        data_root / "dataset" / "index.txt",
        data_root / "dataset" / "old_domain_test.txt",
        data_root / "models" / "base",
        data_root / "edge",
        data_root / "edge" / "frames",
        data_root / "edge" / "store",
        data_root / "lifelong",
    )
    h.dataset.parent.mkdir(parents=True)
    old = render_domain(h.dataset.parent, "A", range(1000, 1003), cityscapes())
    write_index(h.old_test, old)
    build_tiny_segformer(h.base_model, cityscapes(), seed=0, input_size=(64, 128))
    write_frames(h.frames, 3, unknown_from=1)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    yield h
    if os.environ.get("SEDNA_SAM_KEEP_JOB_ROOT"):  # keep the pods' logs and files to look at
        print(f"job root kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(host: Host, sedna_kb_server: str) -> Iterator[SednaCluster]:
    job, dataset = render_job(host, host.root / "overlay")
    venv_bin = str(Path(sys.executable).parent)
    image_env = {  # what our images' ENV gives every container (Dockerfile.cloud/.edge)
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # two shared cores: one torch thread per worker
    }
    with SednaCluster(
        host.root, job, dataset, sedna_kb_server, image_env, image_user=(WORKER_UID, WORKER_UID), seed=7
    ) as c:
        yield c


def messages_of(cluster: SednaCluster, pod) -> list:
    """The reports the worker of ``pod`` sent to the LC (``.content``: the JSON body)."""
    return [m for m in cluster.messages if m.worker == pod.worker_name]


def run_stage(cluster: SednaCluster, worker_type: str):
    """Tick until GM ran the pod of ``worker_type`` (train, eval, inference) and return it."""
    pods = cluster.advance()
    assert pods, f"no pod was started; the job waits:\n{cluster.describe()}"
    (pod,) = pods
    assert pod.worker_type == worker_type, (
        f"expected a {worker_type} pod, GM ran {pod.name}:\n{cluster.describe()}"
    )
    if worker_type != "inference":
        assert pod.exit_codes and pod.exit_codes[-1] == 0 and pod.restarts == 0, (
            f"{pod.name} exited {pod.exit_codes} (restartPolicy OnFailure would restart it):\n{pod.log_tail(80)}"
        )
    return pod


def wait_for(predicate, timeout_s: float, what: str, pod) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s\n{pod.log_tail(80)}")


def owner(path: Path) -> int:
    return path.stat().st_uid


def test_lifelong_learning_job_two_rounds(cluster: SednaCluster, host: Host):
    from sedna_sam.model_files import is_model_archive

    out = host.output
    # LC created the output layout as root; nothing runs yet (no samples)
    assert {p.name for p in out.iterdir()} >= {"data", "train", "eval"}
    if cluster.emulates_users:
        assert owner(out / "train") == 0 and oct((out / "train").stat().st_mode & 0o777) == "0o755"
    assert cluster.advance() == []

    # ---- round 1: 10 labelled samples -> 8 train lines (> threshold 5) and 2 eval lines
    add_samples(host, "A", range(0, 10))
    train1 = run_stage(cluster, "train")
    env = train1.env
    assert env["HAS_COMPLETED_INITIAL_TRAINING"] == "false" and "CLOUD_KB_INDEX" not in env
    assert env["TRAIN_DATASET_URL"] == cluster.container_path(out / "data/train/1/data.txt")
    assert env["OUTPUT_URL"] == cluster.container_path(out / "train/1")
    assert env["KB_SERVER"] == cluster.kb_server and env["DATA_PATH_PREFIX"] == str(cluster.prefix)
    assert train1.spec["spec"]["restartPolicy"] == "OnFailure" and train1.spec["spec"]["hostNetwork"] is True
    if cluster.emulates_users:
        assert train1.uid == WORKER_UID
        assert owner(out / "train") == WORKER_UID and owner(out / "train/1") == WORKER_UID
    (msg,) = messages_of(cluster, train1)
    assert msg.outcome == "accepted", msg
    assert msg.content["ownerKind"] == "lifelonglearningjob" and msg.content["kind"] == "train"
    assert [r["url"] for r in msg.content["results"]] == [str(out / "train/1/index.pkl")]
    round1 = json.loads((out / "train/1/sedna_train.json").read_text())
    assert round1["round"] == "initial" and round1["new_samples"] == 8 and round1["replay_samples"] == 0
    (model1,) = (out / "train/1/seen_task").glob("segformer-*.model")
    assert is_model_archive(model1)
    model1_bytes = model1.read_bytes()

    eval1 = run_stage(cluster, "eval")
    assert eval1.env["MODEL_URLS"] == cluster.container_path(out / "train/1/index.pkl")
    assert eval1.env["TEST_DATASET_URL"] == cluster.container_path(out / "data/eval/1/data.txt")
    (msg,) = messages_of(cluster, eval1)
    assert msg.outcome == "accepted", msg
    (result,) = msg.content["results"]
    assert result["url"] == str(out / "eval/1/index.pkl") and result["metrics"]["gate"] == "accept"
    gate1 = json.loads((out / "eval/1/gate.json").read_text())
    assert gate1["accept"] is True and "first model" in gate1["reasons"][0]

    # ---- deploy: LC copies eval's index to deploy/index.pkl, GM starts the inference pod
    infer = run_stage(cluster, "inference")
    assert (out / "deploy/index.pkl").read_bytes() == (out / "eval/1/index.pkl").read_bytes()
    assert infer.env["MODEL_URLS"] == cluster.container_path(out / "deploy/index.pkl")
    assert "KB_SERVER" not in infer.env
    results = host.edge_root / "infer_results"
    frames = sorted(host.frames.glob("*.png"))
    wait_for(
        lambda: (
            len(list(results.glob("*_TrainIds.png"))) == len(frames)
            and len(list(host.store.rglob("*.json"))) == len(frames)
        ),
        180,
        "segmenting every frame and shipping the flagged ones",
        infer,
    )
    shipped = [json.loads(p.read_text()) for p in host.store.rglob("*.json")]
    assert {m["node"] for m in shipped} == {"node-a"} and all(m["scorer"] == "msp" for m in shipped)
    assert "Traceback" not in infer.log_tail(400), infer.log_tail(400)
    # the lib downloaded the deployed model from the KB server into edge_output_url
    assert list((host.edge_root / "kb" / "seen_task").glob("*segformer-*.model"))

    # ---- round 2: 10 more samples -> 8 new train lines; the previous model is fine-tuned
    add_samples(host, "B", range(100, 110))
    train2 = run_stage(cluster, "train")
    assert train2.env["HAS_COMPLETED_INITIAL_TRAINING"] == "true"
    assert train2.env["CLOUD_KB_INDEX"] == str(out / "train/1/index.pkl")  # no prefix: GM's getCloudKBIndex
    (msg,) = messages_of(cluster, train2)
    assert msg.outcome == "accepted", msg
    round2 = json.loads((out / "train/2/sedna_train.json").read_text())
    assert round2["round"] == "update" and round2["new_samples"] == 8
    assert round2["replay_samples"] == 8, "round 1's samples must be replayed (from its model archive)"
    assert model1.read_bytes() == model1_bytes, "round 1's model must stay as its index recorded it"
    (model2,) = (out / "train/2/seen_task").glob("segformer-*.model")
    assert model2.name != model1.name  # KB server stores by file name: one name per round

    eval2 = run_stage(cluster, "eval")
    (msg,) = messages_of(cluster, eval2)
    assert msg.outcome == "accepted", msg
    assert not msg.content.get("results"), "a rejected model must not be reported (the LC would deploy it)"
    assert json.loads(msg.condition["data"]) == {"output": {}}
    gate2 = json.loads((out / "eval/2/gate.json").read_text())
    assert gate2["accept"] is False and gate2["baseline"].endswith("accepted.model")
    metrics = json.loads((out / "eval/2/metrics.json").read_text())["models"]
    eval_lines = (out / "data/eval/2/data.txt").read_text().split("\n")
    unique = {line for line in eval_lines if line}
    assert len([line for line in eval_lines if line]) > len(unique), "LC repeats earlier eval lines"
    assert {m["new"]["samples"] for m in metrics.values()} == {len(unique)}

    # ---- the rejected model is not deployed: no new deploy, the same inference pod runs on
    cluster.run_until(lambda c: c.latest_condition["stage"] == "Train", max_ticks=10)
    assert [p for p in cluster.pods if p.worker_type == "inference"] == [infer] and infer.phase == "Running"
    assert (out / "deploy/index.pkl").read_bytes() == (out / "eval/1/index.pkl").read_bytes()

    # ---- the rounds as people look at them: each eval's report.html, the job's lifelong page
    for n in (1, 2):
        assert "Gate: " in (out / f"eval/{n}/report.html").read_text()
    from sedna_sam.lifelong.curve import read_job, write_lifelong_page

    write_lifelong_page(out, host.root / "lifelong.html")
    rounds = read_job(out)
    assert [(r.number, r.status, r.train_samples) for r in rounds] == [(1, "deployed", 8), (2, "rejected", 8)]
    assert rounds[1].replay_samples == 8 and rounds[1].baseline_new_miou is not None
    assert rounds[1].new_miou == pytest.approx(
        metrics[str(cluster.container_path(out / "train/2/index.pkl"))]["new"]["mIoU"]
    )

    # ---- SIGTERM ends the inference worker (the lib's threads are not daemons)
    took = cluster.stop_pod(infer, grace_s=10)
    assert not infer.sigkilled and took < 10, f"inference took {took:.1f} s to stop:\n{infer.log_tail()}"
    cluster.assert_no_lost_messages()


def test_workers_stop_within_10_seconds_on_sigterm(cluster: SednaCluster, host: Host):
    """Kubelet sends SIGTERM when a pod is deleted: a train or eval worker busy in Sedna's
    lib must end at once (their pods above ran the same commands to completion)."""
    ran = {p.worker_type: p for p in cluster.pods}
    if "train" not in ran or "eval" not in ran:
        pytest.skip("needs the pods of test_lifelong_learning_job_two_rounds")
    for stage, busy in (("train", "training"), ("eval", "loaded Segformer")):
        pod = ran[stage]
        env = dict(pod.env)
        scratch = host.output / stage / f"sigterm-{stage}"
        env["OUTPUT_URL"] = cluster.container_path(scratch)
        env["TRAIN_STEPS"] = "100000"
        env["LC_SERVER"] = "http://127.0.0.1:9"  # nothing listens: no report reaches the job
        log = host.root / f"sigterm-{stage}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(pod.argv, env=env, cwd=pod.cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while busy not in log.read_text(errors="replace") and proc.poll() is None:
                assert time.monotonic() < deadline, f"{stage} never got busy:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            assert time.monotonic() - start < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)


class RecordingLC:
    """A local controller endpoint that keeps what workers report (the S3 test below has
    no emulated job: the storage initializer that fetches S3 URLs is not emulated)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.reports: list[dict] = []
        reports = self.reports

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reports.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"Status": 200, "Message": "OK"}')

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_train_and_eval_with_the_output_dir_in_s3(tmp_path, local_s3, sedna_kb_server):
    """outputDir in S3 (overlay gpu-cloud-edge): the lib uploads model and index with its MinIO
    client, eval reads the index the storage initializer fetched, keeps its decision and the
    accepted model in S3 and reports s3:// URLs (what GM gives the pods: createPod; secret env:
    runtime/secret_injector.go buildS3SecretEnvs)."""
    import boto3
    from fixtures_lifelong import render_domain

    from sedna_sam.labels import cityscapes
    from sedna_sam.lifelong.data import write_index
    from sedna_sam.segformer import build_tiny_segformer

    local_s3.create_bucket("sedna-sam")
    s3 = boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint,
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )
    data = tmp_path / "dataset"
    pairs = render_domain(data, "A", range(0, 8), cityscapes())
    write_index(data / "index.txt", pairs)
    write_index(tmp_path / "train.txt", pairs[:6])
    write_index(tmp_path / "eval.txt", pairs[6:])
    base = build_tiny_segformer(tmp_path / "base", cityscapes(), seed=0, input_size=(64, 128))
    lc = RecordingLC()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NAMESPACE": "ns",
        "JOB_NAME": "job",
        "LC_SERVER": lc.url,
        "KB_SERVER": sedna_kb_server,
        "BACKEND_TYPE": "PYTORCH",
        "DATA_PATH_PREFIX": "/home/data",
        "ORIGINAL_DATASET_URL": str(data / "index.txt"),
        "SEDNA_SAM_MODEL_CACHE": str(tmp_path / "cache"),
    }

    def run(args: list[str], **extra: str) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "sedna_sam", *args, "--no-progress"],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]

    try:
        run(
            ["train"],
            WORKER_NAME="train-worker-s3",
            HAS_COMPLETED_INITIAL_TRAINING="false",
            TRAIN_DATASET_URL=str(tmp_path / "train.txt"),
            OUTPUT_URL="s3://sedna-sam/lifelong/train/1",
            BASE_MODEL_URL=str(base),
            TRAIN_STEPS="2",
            BATCH_SIZE="2",
        )
        (train_report,) = lc.reports
        assert train_report["results"][0]["url"] == "s3://sedna-sam/lifelong/train/1/index.pkl"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sedna-sam")["Contents"]}
        assert "lifelong/train/1/index.pkl" in keys and "lifelong/train/1/train_report.json" in keys
        assert any(k.startswith("lifelong/train/1/seen_task/segformer-") for k in keys)
        # the storage initializer downloads MODEL_URLS before the eval container starts
        index = tmp_path / "downloads" / "index.pkl"
        index.parent.mkdir()
        s3.download_file("sedna-sam", "lifelong/train/1/index.pkl", str(index))
        for n in (1, 2):
            run(
                ["eval", "--gate", "--allow-missing-old"],
                WORKER_NAME=f"eval-worker-s3-{n}",
                MODEL_URLS=str(index),
                TEST_DATASET_URL=str(tmp_path / "eval.txt"),
                OUTPUT_URL=f"s3://sedna-sam/lifelong/eval/{n}",
                GATE_MIN_NEW_GAIN="1.0",
            )
        first, second = lc.reports[1:]
        assert (
            first["results"][0]["url"] == "s3://sedna-sam/lifelong/eval/1/index.pkl"
        )  # the first is accepted
        assert "results" not in second  # the same model again cannot gain a whole mIoU point
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sedna-sam")["Contents"]}
        assert {"lifelong/eval/accepted.json", "lifelong/eval/accepted.model"} <= keys
        assert {f"lifelong/eval/{n}/{f}" for n in (1, 2) for f in ("gate.json", "metrics.json")} <= keys
        gate2 = json.loads(s3.get_object(Bucket="sedna-sam", Key="lifelong/eval/2/gate.json")["Body"].read())
        assert gate2["accept"] is False and gate2["baseline"]
    finally:
        lc.close()
