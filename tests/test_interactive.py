"""Interactive SAM backend: Label Studio's ML-backend protocol, against the real server.

The end-to-end tests connect the backend to a project of the Label Studio fixture and ask
Label Studio itself for an interactive prediction (``POST /api/ml/{id}/interactive-annotating``,
what the editor calls for a smart keypoint or box): Label Studio builds the /predict request
and forwards our answer. SAM is a tiny random-weight checkpoint, so the masks mean nothing;
coordinates are checked against SAM's own predictor run on the same pixel prompt.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from fixtures_labelstudio import LabelStudioRest

from sedna_sam.labels import LabelSet, labeling_config_xml
from sedna_sam.labelstudio.backend import BackendAuth, SamBackend, make_backend_server
from sedna_sam.labelstudio.connect import connect_backend, connect_interactive
from sedna_sam.labelstudio.image_source import ImageSource
from sedna_sam.labelstudio.interactive import InteractiveSam, mask_polygon_results, prompt_from_context
from sedna_sam.labelstudio.label_config import Controls, controls_from_config, interactive_labeling_config_xml

LABELS = LabelSet.from_names(["road", "car", "scooter"])
W, H = 160, 96  # not square: a swapped x/y or width/height shows
AUTH = BackendAuth("label-studio", "backend-test-password", "backend-test-token")
BASIC = "Basic " + __import__("base64").b64encode(b"label-studio:backend-test-password").decode()


def keypoint(x: float, y: float, label: str = "car", positive: bool = True) -> dict:
    """A smart-keypoint region as the Label Studio editor sends it (percent coordinates)."""
    return {
        "id": f"kp{x:.0f}",
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
    }


def rectangle(x: float, y: float, w: float, h: float, label: str = "scooter") -> dict:
    return {
        "id": "box1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def scene() -> np.ndarray:
    """(H, W, 3) uint8: dark background, a bright car-sized block, a striped block."""
    rng = np.random.default_rng(3)
    img = (rng.random((H, W, 3)) * 40).astype(np.uint8)
    img[20:60, 30:90] = (200, 40, 40)
    img[50:90, 110:150, :] = 230
    img[50:90:4, 110:150, :] = 20
    return img


@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_ckpt):
    """The session's reduced-size SAM checkpoint file, loaded like real weights."""
    from sedna_sam.models import load_sam

    return load_sam(tiny_sam_ckpt, device="cpu")


def reference_mask(sam, image: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
    """SAM's own predictor on a pixel prompt, best predicted IoU (what the backend must match)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    multi = points is not None and len(points) == 1 and box is None
    masks, scores, _ = predictor.predict(
        point_coords=points, point_labels=labels, box=box, multimask_output=multi
    )
    return masks[int(np.argmax(scores))]


def percent_polygons(mask: np.ndarray, controls: Controls) -> list[list[list[float]]]:
    return [r["value"]["points"] for r in mask_polygon_results(mask, "x", controls, min_area_px=4)]


# --- pure parts ----------------------------------------------------------------------


def test_prompt_from_context_converts_percent_to_pixels():
    ctx = [keypoint(25.0, 50.0), keypoint(75.0, 12.5, positive=False), rectangle(10.0, 20.0, 50.0, 25.0)]
    prompt = prompt_from_context(ctx, W, H, "image")
    np.testing.assert_allclose(prompt.points, [[40.0, 48.0], [120.0, 12.0]])
    assert prompt.point_labels.tolist() == [1, 0]
    np.testing.assert_allclose(prompt.box, [16.0, 19.2, 96.0, 43.2])
    assert prompt.label == "car"
    assert prompt_from_context([{"type": "polygonlabels", "value": {}}], W, H) is None
    assert prompt_from_context([keypoint(5, 5) | {"to_name": "other"}], W, H, "image") is None


def test_polygon_results_are_percent_of_the_image():
    controls = Controls("label", "image", "image", ("car",))
    mask = np.zeros((H, W), bool)
    mask[24:48, 40:120] = True  # x 25%..75%, y 25%..50%
    (region,) = mask_polygon_results(mask, "car", controls)
    assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["car"]
    assert (region["from_name"], region["to_name"]) == ("label", "image")
    assert (region["original_width"], region["original_height"]) == (W, H)
    pts = np.array(region["value"]["points"])
    # Exactly the geometry's pixel polygon scaled by 100/W and 100/H ...
    from sedna_sam.geometry import polygons_from_mask

    (pixels,) = polygons_from_mask(mask, tolerance_px=1.0, min_area_px=25)
    np.testing.assert_allclose(pts, np.asarray(pixels) * [100 / W, 100 / H], atol=1e-4)
    # ... which puts the corners within a pixel of the rectangle's edges.
    px, py = 1.01 * 100 / W, 1.01 * 100 / H
    assert abs(pts[:, 0].min() - 25.0) <= px and abs(pts[:, 0].max() - 75.0) <= px
    assert abs(pts[:, 1].min() - 25.0) <= py and abs(pts[:, 1].max() - 50.0) <= py


def test_interactive_config_pairs_polygons_with_smart_tools():
    xml = interactive_labeling_config_xml(LABELS)
    controls = controls_from_config(xml)
    assert controls == Controls("label", "image", "image", ("road", "car", "scooter"))
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for tag in ("KeyPointLabels", "RectangleLabels"):
        (el,) = root.iter(tag)
        assert el.get("smart") == "true" and el.get("toName") == "image"
        assert [lbl.get("value") for lbl in el.iter("Label")] == list(LABELS.names)


def test_embedding_cache_is_bounded_and_counted(tiny_sam):
    image = scene()
    calls = []
    hook = tiny_sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        engine = InteractiveSam(tiny_sam, cache_size=1)
        prompt = prompt_from_context([keypoint(40, 40)], W, H)
        engine.segment("a", lambda: image, prompt)
        engine.segment("a", lambda: pytest.fail("cached image must not be read again"), prompt)
        engine.segment("b", lambda: image, prompt)  # evicts "a"
        engine.segment("a", lambda: image, prompt)
    finally:
        hook.remove()
    assert len(calls) == engine.encoder_calls == 3


def test_image_source_reads_document_root_files(tmp_path):
    from sedna_sam.images import write_png

    write_png(tmp_path / "raw" / "f.png", scene())
    source = ImageSource(ls_url=None, token=None, document_root=str(tmp_path))
    np.testing.assert_array_equal(source.load("/data/local-files/?d=raw/f.png"), scene())
    np.testing.assert_array_equal(source.load("raw/f.png"), scene())  # relative to the document root
    with pytest.raises(Exception, match="no Label Studio URL"):
        source.load("/data/local-files/?d=raw/missing.png")


# --- HTTP server ------------------------------------------------------------------------


@pytest.fixture()
def backend_factory(tiny_sam):
    servers = []

    def start(images: ImageSource, cache_size: int = 4) -> tuple[str, SamBackend]:
        # min_area_px=4: a random-weight SAM's masks are speckled; keep the specks so the
        # polygon comparisons below are never between two empty lists.
        engine = InteractiveSam(tiny_sam, cache_size=cache_size)
        backend = SamBackend(engine, images, model_version="sam-tiny", min_area_px=4)
        server = make_backend_server(backend, "127.0.0.1", 0, auth=AUTH)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", backend

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def post(url: str, body, raw: bytes | None = None, auth: str | None = BASIC) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_routes_and_errors(backend_factory, tmp_path):
    from sedna_sam.images import write_png

    write_png(tmp_path / "f.png", scene())
    url, _ = backend_factory(ImageSource(document_root=str(tmp_path)))
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "UP"
    assert post(
        url + "/setup", {"project": "3.1700000000", "schema": interactive_labeling_config_xml(LABELS)}
    ) == (
        200,
        {"model_version": "sam-tiny"},
    )
    assert post(url + "/webhook", {"action": "ANNOTATION_CREATED"})[0] == 200
    code, body = post(url + "/predict", None, raw=b"{not json")
    assert code == 400 and "error" in body
    task = {"id": 1, "data": {"image": "/data/local-files/?d=f.png"}}
    request = {"tasks": [task], "project": "9.1", "params": {"context": {"result": [keypoint(30, 40)]}}}
    code, body = post(url + "/predict", request)  # project 9 never set up, no label_config
    assert code == 400 and "label_config" in body["error"]
    code, body = post(url + "/predict", request | {"project": "3.1700000000"})  # config from /setup
    assert code == 200 and body["results"][0]["result"][0]["value"]["polygonlabels"] == ["car"]
    code, body = post(
        url + "/predict", request | {"label_config": "<View><Image name='i' value='$image'/></View>"}
    )
    assert code == 400 and "PolygonLabels" in body["error"]
    missing = {"tasks": [{"id": 2, "data": {"image": "/data/local-files/?d=gone.png"}}]}
    code, body = post(url + "/predict", request | missing | {"project": "3.1"})
    assert code == 400 and "gone.png" in body["error"]
    # Batch prediction requests (no context) get no regions: this backend is interactive only.
    assert post(url + "/predict", {"tasks": [task], "params": {}})[1]["results"] == []


# --- against the real Label Studio server -------------------------------------------------


@pytest.fixture(scope="module")
def interactive_project(ls_server, tmp_path_factory):
    """A project as `ls push` makes it (plain polygon config), a local-files storage, one task."""
    from pathlib import Path

    from sedna_sam.images import write_png

    image_dir = Path(ls_server.document_root) / f"interactive-{tmp_path_factory.getbasetemp().name}"
    write_png(image_dir / "frame.png", scene())
    ls = LabelStudioRest(ls_server.url, ls_server.token)
    project = ls.call(
        "POST",
        "/api/projects",
        # The plain config `ls push` creates; connecting the backend adds the smart tools.
        json={"title": "Interactive SAM", "label_config": labeling_config_xml(LABELS)},
    )
    ls.call(
        "POST",
        "/api/storages/localfiles",
        json={"project": project["id"], "path": str(image_dir), "title": "frames", "use_blob_urls": False},
    )
    ls.call(
        "POST",
        f"/api/projects/{project['id']}/import",
        json=[{"image": f"/data/local-files/?d={image_dir.name}/frame.png"}],
    )
    (task,) = ls.call("GET", "/api/tasks", params={"project": project["id"]})["tasks"]
    return ls, project["id"], task["id"]


def test_label_studio_click_and_box_come_back_as_polygons(
    ls_server, interactive_project, backend_factory, tiny_sam
):
    ls, project_id, task_id = interactive_project
    # No document root: the image comes through Label Studio's local-files URL, fetched
    # from the configured Label Studio with the configured token (never /setup's).
    backend_url, backend = backend_factory(ImageSource(ls_url=ls_server.url, token=ls_server.token))
    ml = connect_interactive(ls_server.url, ls_server.token, project_id, backend_url, LABELS, auth=AUTH)
    config = ls.call("GET", f"/api/projects/{project_id}")["label_config"]
    assert controls_from_config(config).polygon_from == "label" and 'smart="true"' in config
    again = connect_backend(ls_server.url, ls_server.token, project_id, backend_url, auth=AUTH)
    assert again["id"] == ml["id"]  # idempotent
    assert ml["is_interactive"] and ml["auth_method"] == "BASIC_AUTH"
    assert backend.label_configs  # /setup reached the backend, with Label Studio's basic auth

    calls = []
    hook = tiny_sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        timings = []
        for ctx in ([keypoint(37.5, 50.0)], [keypoint(37.5, 50.0), keypoint(80.0, 70.0, positive=False)]):
            t0 = time.perf_counter()
            answer = ls.call(
                "POST",
                f"/api/ml/{ml['id']}/interactive-annotating",
                json={"task": task_id, "context": {"result": ctx}},
            )
            timings.append(time.perf_counter() - t0)
            assert "errors" not in answer, answer
            regions = answer["data"]["result"]
            assert answer["data"]["model_version"] == "sam-tiny"
            assert regions and all(r["value"]["polygonlabels"] == ["car"] for r in regions)
            assert {(r["from_name"], r["to_name"], r["type"]) for r in regions} == {
                ("label", "image", "polygonlabels")
            }
            # Same prompt in pixels through SAM's own predictor -> the same polygons, in percent.
            pts = np.array([[c["value"]["x"] * W / 100, c["value"]["y"] * H / 100] for c in ctx])
            labels = np.array([1 if c["is_positive"] else 0 for c in ctx])
            expected = reference_mask(tiny_sam, scene(), pts, labels)
            controls = controls_from_config(interactive_labeling_config_xml(LABELS))
            assert [r["value"]["points"] for r in regions] == percent_polygons(expected, controls)
        encoder_runs_for_clicks = len(calls) - 2  # minus the two reference embeddings
    finally:
        hook.remove()
    # The second click on the same task reused the embedding: one encoder run for two clicks.
    assert encoder_runs_for_clicks == 1 and backend.sam.encoder_calls == 1
    print(f"\nclick via Label Studio: first {timings[0]:.3f}s, second (cached) {timings[1]:.3f}s")

    box = rectangle(15.0, 18.0, 45.0, 50.0)
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task_id, "context": {"result": [box]}},
    )
    regions = answer["data"]["result"]
    assert regions and all(r["value"]["polygonlabels"] == ["scooter"] for r in regions)
    expected = reference_mask(tiny_sam, scene(), box=np.array([24.0, 17.28, 96.0, 65.28]))
    assert [r["value"]["points"] for r in regions] == percent_polygons(expected, controls)
    assert backend.sam.encoder_calls == 1


def test_ls_backend_command_serves_label_studio_requests(tiny_sam_ckpt, tmp_path):
    """`sedna-sam ls backend` as a process: answers /health and a click, stops on Ctrl+C."""
    import signal
    import socket
    import subprocess
    import sys

    from sedna_sam.images import write_png

    write_png(tmp_path / "f.png", scene())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "sedna_sam", "ls", "backend", "--ckpt-path", str(tiny_sam_ckpt),
           "--port", str(port), "--device", "cpu", "--cache-size", "2", "--document-root", str(tmp_path)]  # fmt: skip
    env = dict(os.environ, SEDNA_SAM_BACKEND_USER=AUTH.username, SEDNA_SAM_BACKEND_PASSWORD=AUTH.password)
    env.pop("BACKEND_HOST", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        assert health["status"] == "UP" and health["model_version"] == "sam-sam_tiny"
        task = {"id": 7, "data": {"image": "/data/local-files/?d=f.png"}}
        request = {"tasks": [task], "label_config": interactive_labeling_config_xml(LABELS),
                   "params": {"context": {"result": [keypoint(37.5, 50.0)]}}}  # fmt: skip
        code, body = post(url + "/predict", request)
        assert code == 200 and body["results"][0]["model_version"] == "sam-sam_tiny"
        assert all(r["value"]["polygonlabels"] == ["car"] for r in body["results"][0]["result"])
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "listening on http://127.0.0.1" in out  # the default bind address: loopback only
    assert AUTH.password not in out


def test_ls_push_connect_backend(ls_server, backend_factory, tmp_path, monkeypatch, capsys):
    """`sedna-sam ls push --connect-backend URL`: pushed project gets the smart tools and the
    backend; Label Studio then routes a click on a pushed task to it."""
    from pathlib import Path

    from sedna_sam.cli import main
    from sedna_sam.formats.ssa import write_ssa
    from sedna_sam.images import write_png
    from sedna_sam.storage import DatasetLayout

    layout = DatasetLayout(Path(ls_server.document_root) / f"push-{tmp_path.name}")
    write_png(layout.raw_data / "street.png", scene())
    class_map = np.full((H, W), 255, np.uint16)
    class_map[20:60, 30:90] = LABELS.label2id["car"]
    write_ssa(layout.ssa_json("street"), class_map, [])
    labels_json = tmp_path / "labels.json"
    labels_json.write_text(json.dumps({str(i): n for i, n in LABELS.id2label.items()}))
    backend_url, backend = backend_factory(ImageSource(document_root=str(ls_server.document_root)))
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    monkeypatch.setenv("SEDNA_SAM_BACKEND_USER", AUTH.username)
    monkeypatch.setenv("SEDNA_SAM_BACKEND_PASSWORD", AUTH.password)
    title = f"Push backend {tmp_path.name[-12:]}"
    argv = ["ls", "push", "--dataset-dir", str(layout.root), "--config-path", str(labels_json),
            "--project", title, "--connect-backend", backend_url]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0  # rerun: same project, same connection
    assert f"interactive backend {backend_url} connected" in capsys.readouterr().out

    ls = LabelStudioRest(ls_server.url, ls_server.token)
    (project,) = [
        p
        for p in ls.call("GET", "/api/projects", params={"page_size": 1000})["results"]
        if p["title"] == title
    ]
    (ml,) = ls.call("GET", "/api/ml", params={"project": project["id"]})
    assert ml["url"] == backend_url and ml["is_interactive"] and ml["auth_method"] == "BASIC_AUTH"
    (task,) = ls.call("GET", "/api/tasks", params={"project": project["id"]})["tasks"]
    answer = ls.call(
        "POST",
        f"/api/ml/{ml['id']}/interactive-annotating",
        json={"task": task["id"], "context": {"result": [keypoint(37.5, 50.0)]}},
    )
    assert answer["data"]["result"] and backend.sam.encoder_calls == 1
    # `ls connect-backend` (the manifests' Job): the same connection from the project alone,
    # idempotent, and a project that never appears is a clear error after --wait
    argv = ["ls", "connect-backend", "--project", title, "--backend-url", backend_url, "--config-path",
            str(labels_json), "--wait", "5", "--interval", "1"]  # fmt: skip
    assert main(argv) == 0
    assert f"connected to project {project['id']}" in capsys.readouterr().out
    assert len(ls.call("GET", "/api/ml", params={"project": project["id"]})) == 1
    missing = ["ls", "connect-backend", "--project", "no such project", "--backend-url", backend_url,
               "--wait", "2", "--interval", "1"]  # fmt: skip
    assert main(missing) == 2
