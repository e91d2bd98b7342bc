"""Push and pull against a real Label Studio server (``ls_server`` fixture).

Datasets are made of axis-aligned rectangles on a road background, so the polygons we
push are exact and a corrected annotation must come back as exactly the expected pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_labelstudio import CAR, PERSON, H, W, class_map, make_dataset, new_dataset

from sedna_sam.cli import main
from sedna_sam.formats.trainids import read_trainids
from sedna_sam.labelstudio.api import LabelStudioClient
from sedna_sam.labelstudio.client import pull_dataset, push_dataset
from sedna_sam.labelstudio.http import LabelStudioError, ServerUnreachable
from sedna_sam.storage import DatasetLayout

pytestmark = pytest.mark.labelstudio


@pytest.fixture()
def client(ls_server):
    with LabelStudioClient(ls_server.url, ls_server.token, retries=2, backoff_s=0.2) as c:
        yield c


def tasks_of(client, project_id: int) -> list[dict]:
    return list(client.iter_tasks(project_id))


def test_push_twice_creates_no_duplicates(ls_server, client, labels):
    dataset, title = new_dataset(ls_server)
    first = push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)
    assert (first.done, first.skipped, first.failed) == (3, 0, [])
    second = push_dataset(
        dataset, labels, project=title, client=client, document_root=ls_server.document_root
    )
    assert (second.done, second.skipped, second.failed) == (0, 3, [])
    project = client.find_project(title)
    tasks = tasks_of(client, project["id"])
    assert len(tasks) == 3
    assert sorted(t["id"] for t in client.iter_tasks(project["id"], page_size=2)) == sorted(
        t["id"] for t in tasks
    )
    assert sorted(t["data"]["image"].rsplit("/", 1)[-1] for t in tasks) == [
        "img00.png",
        "img01.png",
        "img02.png",
    ]
    storages = client.json("GET", "/api/storages/localfiles", params={"project": project["id"]})
    assert [s["path"] for s in storages] == [str((dataset / "raw_data").resolve())]
    # the image is served through the storage
    image = client.request("GET", tasks[0]["data"]["image"])
    assert image.headers["content-type"].startswith("image/")


def test_predictions_visible_with_right_points(ls_server, client, labels):
    dataset, title = new_dataset(ls_server, n=1)
    push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)
    (task,) = tasks_of(client, client.find_project(title)["id"])
    (prediction,) = task["predictions"]
    by_label = {r["value"]["polygonlabels"][0]: r for r in prediction["result"]}
    assert set(by_label) == {"road", "car", "person"}
    car = np.array(by_label["car"]["value"]["points"])  # percent of W, H
    xs, ys = car[:, 0] * W / 100, car[:, 1] * H / 100
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((5, 25, 10, 30), abs=1e-3)
    assert by_label["car"]["original_width"] == W and by_label["car"]["original_height"] == H
    # what the server holds is what the converter wrote
    pushed = json.loads((DatasetLayout(dataset).ls_data / "tasks.json").read_text())[0]
    assert prediction["result"] == pushed["predictions"][0]["result"]


def annotate(client, task: dict, relabel: dict[str, str]) -> dict:
    """Create an annotation: the prediction's regions with some labels changed."""
    result = json.loads(json.dumps(task["predictions"][0]["result"]))
    for r in result:
        name = r["value"]["polygonlabels"][0]
        r["value"]["polygonlabels"] = [relabel.get(name, name)]
    return client.json(
        "POST", f"/api/tasks/{task['id']}/annotations/", json={"result": result, "task": task["id"]}
    )


def test_corrected_annotation_pulls_back_as_trainids(ls_server, client, labels):
    dataset, title = new_dataset(ls_server, n=2)
    push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)
    project = client.find_project(title)
    tasks = sorted(tasks_of(client, project["id"]), key=lambda t: t["data"]["image"])
    annotate(client, tasks[0], {"car": "truck"})  # the person corrects car -> truck

    report = pull_dataset(client, title, dataset, labels)
    assert (report.done, report.failed) == (1, [])
    layout = DatasetLayout(dataset)
    got = read_trainids(layout.trainids("img00"))
    expected = class_map(0)
    expected[expected == CAR] = labels.label2id["truck"]
    assert got.dtype == np.uint16 and got.shape == (H, W)
    np.testing.assert_array_equal(got, expected)
    assert not layout.trainids("img01").exists()  # not annotated -> nothing written
    export = json.loads(Path(report.export_path).read_text())
    assert [r["id"] for r in export] == [tasks[0]["id"]]


def test_pull_only_new_converts_changed_annotations_only(ls_server, client, labels, capsys, monkeypatch):
    dataset, title = new_dataset(ls_server, n=2)
    push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)
    project = client.find_project(title)
    tasks = sorted(tasks_of(client, project["id"]), key=lambda t: t["data"]["image"])
    annotate(client, tasks[0], {})
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    args = ["ls", "pull", "--dataset-dir", str(dataset), "--project", title, "--only-new", "--format", "JSON"]
    assert main(args) == 0
    layout = DatasetLayout(dataset)
    first = layout.trainids("img00").stat().st_mtime_ns
    annotate(client, tasks[1], {"person": "rider"})
    again = pull_dataset(client, title, dataset, labels, export_format="JSON", only_new=True)
    assert again.done == 1 and again.notes["unchanged since the last pull"] == 1
    assert layout.trainids("img00").stat().st_mtime_ns == first  # not rewritten
    got = read_trainids(layout.trainids("img01"))
    assert (got == labels.label2id["rider"]).sum() == (class_map(1) == PERSON).sum()
    out = capsys.readouterr()
    assert ls_server.token not in out.out + out.err


def test_cli_push_prints_project_url_never_the_token(ls_server, labels, monkeypatch, capsys, caplog):
    dataset, title = new_dataset(ls_server, n=2)
    token_file = Path(ls_server.data_dir) / "api-token"
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(ls_server.document_root))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    argv = ["ls", "push", "--dataset-dir", str(dataset), "--project", title, "--token-file", str(token_file)]
    caplog.set_level("DEBUG")
    assert main(["--log-level", "DEBUG", *argv]) == 0
    out = capsys.readouterr()
    assert f"{ls_server.url}/projects/" in out.out
    assert ls_server.token not in out.out + out.err + caplog.text


def test_bad_token_gives_clear_error(ls_server, labels, tmp_path):
    with LabelStudioClient(ls_server.url, "0" * 40, retries=0) as bad:
        with pytest.raises(LabelStudioError, match="refused the API token") as err:
            push_dataset(make_dataset(tmp_path / "d", 1), labels, project="Bad token", client=bad)
    assert err.value.status in (401, 403)
    assert "0" * 40 not in str(err.value)


def test_unknown_project_and_label_mismatch(ls_server, client, labels):
    with pytest.raises(LabelStudioError, match="no project titled"):
        client.get_project("No such project here")
    dataset, title = new_dataset(ls_server, n=1)
    client.json(
        "POST", "/api/projects/", json={"title": title, "label_config": labels_config_without_car(labels)}
    )
    with pytest.raises(LabelStudioError, match="lacks labels the predictions use: car"):
        push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)


def labels_config_without_car(labels) -> str:
    from sedna_sam.labels import labeling_config_xml

    return "\n".join(line for line in labeling_config_xml(labels).splitlines() if 'value="car"' not in line)


def test_images_outside_document_root(ls_server, client, labels, tmp_path):
    dataset = make_dataset(tmp_path / "outside", 1)
    with pytest.raises(Exception, match="outside the Label Studio document root"):
        push_dataset(
            dataset, labels, project="Outside root", client=client, document_root=ls_server.document_root
        )


@pytest.mark.slow
def test_server_stopped_mid_push_then_rerun_completes(ls_server, labels):
    dataset, title = new_dataset(ls_server, n=5)

    def stop_after_first_batch(n_done: int) -> None:
        if n_done == 2:
            ls_server.stop()

    try:
        with LabelStudioClient(ls_server.url, ls_server.token, retries=1, backoff_s=0.1) as c:
            with pytest.raises(ServerUnreachable, match="Rerun the command"):
                push_dataset(
                    dataset, labels, project=title, client=c, document_root=ls_server.document_root,
                    batch_size=2, on_batch=stop_after_first_batch,
                )  # fmt: skip
    finally:
        ls_server.restart()
    with LabelStudioClient(ls_server.url, ls_server.token) as c:
        report = push_dataset(dataset, labels, project=title, client=c, document_root=ls_server.document_root)
        assert (report.done, report.skipped, report.failed) == (3, 2, [])
        tasks = tasks_of(c, c.find_project(title)["id"])
    assert len(tasks) == 5
    assert len({t["data"]["image"] for t in tasks}) == 5


def test_server_secrets_stay_private(ls_server):
    server = ls_server.server
    for path in (server.token_file, server.password_file):
        assert path.stat().st_mode & 0o777 == 0o600
    assert len(ls_server.token) == 40
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "label-studio" in cmdline or "label_studio" in cmdline
    log_text = server.log_path.read_text(errors="replace")
    for secret in (ls_server.token, ls_server.password):
        assert secret not in cmdline and secret not in log_text


def _set_model_version(dataset: Path, version: str) -> None:
    path = DatasetLayout(dataset).ls_data / "tasks.json"
    tasks = json.loads(path.read_text())
    for task in tasks:
        for pred in task["predictions"]:
            pred["model_version"] = version
    path.write_text(json.dumps(tasks))


def test_new_model_version_replaces_or_adds_predictions(ls_server, client, labels):
    dataset, title = new_dataset(ls_server, n=2)
    kw = dict(project=title, client=client, document_root=ls_server.document_root)
    push_dataset(dataset, labels, **kw)
    project = client.find_project(title)

    def versions() -> list[list[str]]:
        tasks = sorted(tasks_of(client, project["id"]), key=lambda t: t["id"])
        return [sorted(p["model_version"] for p in t["predictions"]) for t in tasks]

    _set_model_version(dataset, "v2")
    replaced = push_dataset(dataset, labels, **kw)
    assert replaced.notes["predictions replaced"] == 2 and replaced.done == 2
    assert versions() == [["v2"], ["v2"]]
    _set_model_version(dataset, "v3")
    push_dataset(dataset, labels, on_new_version="add", **kw)
    assert versions() == [["v2", "v3"], ["v2", "v3"]]
    _set_model_version(dataset, "v4")
    kept = push_dataset(dataset, labels, on_new_version="keep", **kw)
    assert kept.done == 0 and versions() == [["v2", "v3"], ["v2", "v3"]]
    assert len(tasks_of(client, project["id"])) == 2


def test_retries_5xx_then_succeeds(tmp_path):
    """A real HTTP server that answers 503 twice before 200: the client retries."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            calls.append(self.headers.get("Authorization"))
            status = 503 if len(calls) <= 2 else 200
            body = b'{"id": 7, "title": "x"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with LabelStudioClient(url, "secret-token", retries=3, backoff_s=0.01) as c:
            assert c.get_project(7)["id"] == 7
        with LabelStudioClient(url, "secret-token", retries=0, backoff_s=0.01) as c:
            calls.clear()
            with pytest.raises(ServerUnreachable, match="HTTP 503"):
                c.get_project(7)
    finally:
        httpd.shutdown()
    assert calls[0] == "Token secret-token"
