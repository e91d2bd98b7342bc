"""Fleet dashboards: the monitoring component renders onto an overlay, its monitors select
what Sedna and our manifests really create, and every metric the Grafana dashboard
queries is one that a running edge worker or cloud service really exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures_cloud import local_service_config, serving
from fixtures_http import fetch

from sedna_sam.cloud import samples as q

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "manifests" / "components" / "monitoring"
DASHBOARD = COMPONENT / "sedna-sam-fleet.json"
# What Sedna's global manager labels its worker pods with (pkg/globalmanager/runtime/worker.go:
# generateLabels: "<lower(kind.group)>/name" and ".../worker-type"; createInferPod: "inference").
SEDNA_POD_LABELS = {
    "lifelonglearningjob.sedna.io/name": "sedna-sam",
    "lifelonglearningjob.sedna.io/worker-type": "inference",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_with_monitoring(tmp_path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: install Debian's `kubectl` package (scripts/install.sh does)")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = yaml.safe_load((ROOT / "manifests/overlays/gpu-cloud-edge/kustomization.yaml").read_text())
    (overlay / "settings.yaml").write_text(
        (ROOT / "manifests/overlays/gpu-cloud-edge/settings.yaml").read_text()
    )
    (overlay / "namespace.yaml").write_text(
        (ROOT / "manifests/overlays/gpu-cloud-edge/namespace.yaml").read_text()
    )
    kustomization = {
        **base,
        "resources": [
            r
            if r in ("namespace.yaml", "settings.yaml")
            else os.path.relpath(ROOT / "manifests/overlays/gpu-cloud-edge" / r, overlay)
            for r in base["resources"]
        ],
        "components": [
            os.path.relpath(ROOT / "manifests/components/settings", overlay),
            os.path.relpath(COMPONENT, overlay),
        ],
    }
    # gpu-cloud-edge's own kustomization with the monitoring component added, as a user would
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_component_renders_and_selects_the_right_pods(tmp_path):
    docs = render_with_monitoring(tmp_path)
    by_kind = {d["kind"]: d for d in docs}
    pod_monitor, service_monitor = by_kind["PodMonitor"], by_kind["ServiceMonitor"]
    job = by_kind["LifelongLearningJob"]
    assert pod_monitor["metadata"]["namespace"] == job["metadata"]["namespace"] == "sedna-sam"
    assert pod_monitor["spec"]["selector"]["matchLabels"] == SEDNA_POD_LABELS
    assert job["metadata"]["name"] == SEDNA_POD_LABELS["lifelonglearningjob.sedna.io/name"]
    edge = job["spec"]["deploySpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in edge["ports"]}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    args = edge["args"]
    assert args[args.index("--metrics-port") + 1] == str(ports[endpoint["port"]])
    from sedna_sam.cli import build_parser

    parsed = build_parser().parse_args(edge["command"][1:] + args)
    assert parsed.metrics_port == ports["metrics"]
    service = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "sedna-sam-annotation"
    )
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    dashboards = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    (dashboard,) = dashboards
    assert json.loads(dashboard["data"]["sedna-sam-fleet.json"])["uid"] == "sedna-sam-fleet"


def dashboard_metric_names() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    assert exprs
    return {name for e in exprs for name in re.findall(r"\bsedna_sam_[a-z0-9_]+", e)}


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape of ``url``."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = fetch(url)
    assert status == 200, text[:500]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def sample_names(url: str) -> set[str]:
    return {name for name, _ in scrape(url)}


@pytest.mark.slow
def test_every_dashboard_metric_is_exposed(tmp_path, tiny_segformer_dir, edge_frames, labels):
    """Scrape a real edge worker (frames through it) and a real cloud service."""
    from sedna_sam.cloud.service import AnnotationService

    frames = edge_frames(tmp_path / "frames", 3, unknown_from=1)
    (tmp_path / "store").mkdir()
    port = free_port()
    log = tmp_path / "edge.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        edge = subprocess.Popen(
            [sys.executable, "-m", "sedna_sam", "edge", "run", "--source", str(frames[0].parent), "--watch",
             "--model", str(tiny_segformer_dir), "--result-dir", str(tmp_path / "results"),
             "--unseen-dir", str(tmp_path / "unseen"), "--store", str(tmp_path / "store"), "--threshold", "0",
             "--metrics-port", str(port), "--node", "edge-7", "--device", "cpu"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        edge_names: set[str] = set()
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                text = ""
            if 'sedna_sam_edge_frames_total{node="edge-7",result="ok"} 3.0' in text:
                edge_names = sample_names(f"http://127.0.0.1:{port}/metrics")
                break
            assert edge.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert edge_names, f"the edge worker did not report 3 frames:\n{log.read_text()[-3000:]}"
    finally:
        edge.send_signal(signal.SIGTERM)
        edge.wait(timeout=30)

    job = tmp_path / "lifelong"  # one evaluated round in the job's outputDir
    (job / "eval" / "1").mkdir(parents=True)
    (job / "eval" / "1" / "metrics.json").write_text(
        json.dumps({"models": {"m1": {"new": {"mIoU": 0.41}, "old": {"mIoU": 0.52}}}, "baseline": None})
    )
    (job / "eval" / "1" / "gate.json").write_text(
        json.dumps({"accept": True, "candidate": "m1", "backward_transfer": 0.01, "reasons": []})
    )
    service = AnnotationService(local_service_config(tmp_path, labels, "s3cret", job_output_dir=str(job)))
    # one sample all the way to the dataset, so that the flag-to-label times exist
    service.queue.receive("s1", node="edge-7", meta={"frame_time": time.time() - 30})
    for a, b in zip(q.STATES, q.STATES[1:]):
        service.queue.advance("s1", a, b)
    with serving(service, interval_s=3600) as cloud_port:
        url = f"http://127.0.0.1:{cloud_port}/metrics"
        service.metrics.observe("pre_annotate", 1.0, ok=True)
        service.metrics.observe("push", 0.1, ok=False)
        cloud_names = sample_names(url)
        values = scrape(url)
        assert values[("sedna_sam_round_miou", (("domain", "new"), ("round", "1")))] == 0.41
        assert values[("sedna_sam_round_deployed", (("round", "1"),))] == 1
    missing = sorted(dashboard_metric_names() - edge_names - cloud_names)
    assert not missing, f"the dashboard queries metrics nobody exposes: {missing}"
