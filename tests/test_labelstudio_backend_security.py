"""The interactive backend, locked down (issue 12, finding 1): credentials on every route
but /health, images only from under the document root or the configured Label Studio
origin (the token only there), /setup cannot re-point it, bounded requests and threads, a
loopback default bind. Each of these was open on today's main.

A second local HTTP server plays the host an attacker chooses: it records every request
it gets, so "nothing reached it" is observed, not assumed."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fixtures_http import http_call, raw_exchange

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.images import encode_png, write_png
from sedna_sam.labels import LabelSet
from sedna_sam.labelstudio.backend import BackendAuth, SamBackend, make_backend_server
from sedna_sam.labelstudio.connect import connect_backend
from sedna_sam.labelstudio.image_source import ImageSource
from sedna_sam.labelstudio.interactive import InteractiveSam
from sedna_sam.labelstudio.label_config import interactive_labeling_config_xml

LABELS = LabelSet.from_names(["road", "car"])
AUTH = BackendAuth("label-studio", "correct horse battery", "bearer-token-123")
BASIC = "Basic " + base64.b64encode(b"label-studio:correct horse battery").decode()
IMAGE = encode_png(np.full((24, 32, 3), 120, np.uint8))


class Recorder:
    """A local HTTP server that records (method, path, Authorization) of every request and
    answers with ``body`` (or a redirect to ``redirect``)."""

    def __init__(self, body: bytes = IMAGE, redirect: str | None = None) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                recorder.requests.append(("GET", self.path, self.headers.get("Authorization")))
                if redirect:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders():
    made = []

    def make(**kw) -> Recorder:
        made.append(Recorder(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_ckpt):
    from sedna_sam.models import load_sam

    return load_sam(tiny_sam_ckpt, device="cpu")


@pytest.fixture
def backend(tiny_sam):
    servers = []

    def start(images: ImageSource, **kw) -> tuple[str, SamBackend]:
        b = SamBackend(
            InteractiveSam(tiny_sam, cache_size=2), images, model_version="sam-tiny", min_area_px=4
        )
        server = make_backend_server(b, "127.0.0.1", 0, auth=AUTH, **kw)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}", b

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def call(
    address: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None
) -> tuple[int, dict]:
    host, port = address.split(":")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    status, payload = http_call(
        host, port, method, path, data, {"Content-Type": "application/json", **(headers or {})}
    )
    return status, (json.loads(payload) if payload else {})


def click(image: str, project: str = "3.1") -> dict:
    keypoint = {
        "type": "keypointlabels",
        "to_name": "image",
        "value": {"x": 40.0, "y": 50.0, "keypointlabels": ["car"]},
    }
    return {
        "tasks": [{"id": 1, "data": {"image": image}}],
        "project": project,
        "label_config": interactive_labeling_config_xml(LABELS),
        "params": {"context": {"result": [keypoint]}},
    }


# ----------------------------------------------------------------------------- credentials


def test_every_route_but_health_needs_credentials(backend, tmp_path):
    write_png(tmp_path / "f.png", np.zeros((24, 32, 3), np.uint8))
    address, _ = backend(ImageSource(document_root=str(tmp_path)))
    assert call(address, "GET", "/health")[0] == 200  # Label Studio's health check, and probes
    for path in ("/predict", "/setup", "/webhook", "/validate"):
        status, body = call(address, "POST", path, {})
        assert status == 401 and body["error"] == "authentication required", path
    wrong = "Basic " + base64.b64encode(b"label-studio:guess").decode()
    for headers in ({"Authorization": wrong}, {"Authorization": "Bearer nope"}, {"Authorization": "Token x"}):
        assert call(address, "POST", "/predict", click("/data/local-files/?d=f.png"), headers)[0] == 401
    for good in (BASIC, "Bearer bearer-token-123"):
        status, body = call(
            address, "POST", "/predict", click("/data/local-files/?d=f.png"), {"Authorization": good}
        )
        assert status == 200 and body["results"][0]["model_version"] == "sam-tiny"


def test_a_server_without_credentials_cannot_be_made(tiny_sam):
    b = SamBackend(InteractiveSam(tiny_sam), ImageSource())
    with pytest.raises(SednaSamError, match="SEDNA_SAM_BACKEND_PASSWORD"):
        make_backend_server(b, "127.0.0.1", 0, auth=BackendAuth())


def test_ls_backend_command_refuses_to_start_without_credentials(monkeypatch, caplog, tmp_path):
    from sedna_sam.cli import main

    for name in ("SEDNA_SAM_BACKEND_USER", "SEDNA_SAM_BACKEND_PASSWORD", "SEDNA_SAM_BACKEND_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["ls", "backend", "--ckpt-path", str(tmp_path / "none.pth")]) == 2
    assert "SEDNA_SAM_BACKEND_USER" in caplog.text


def test_ls_backend_listens_on_loopback_by_default(monkeypatch):
    import argparse

    from sedna_sam.commands.ls_backend import register_ls

    monkeypatch.delenv("BACKEND_HOST", raising=False)
    parser = argparse.ArgumentParser()
    register_ls(parser.add_subparsers())
    assert parser.parse_args(["backend", "--ckpt-path", "x"]).host == "127.0.0.1"


def test_ls_push_connect_backend_needs_backend_credentials(monkeypatch, caplog, tmp_path):
    from sedna_sam.cli import main

    for name in ("SEDNA_SAM_BACKEND_USER", "SEDNA_SAM_BACKEND_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "t" * 40)
    argv = ["ls", "push", "--dataset-dir", str(tmp_path), "--url", "http://127.0.0.1:9",
            "--connect-backend", "http://127.0.0.1:9090"]  # fmt: skip
    assert main(argv) == 2  # before anything is pushed (nothing listens on port 9)
    assert "basic auth" in caplog.text


def test_label_studio_connects_with_basic_auth_and_a_wrong_password_is_refused(ls_server, backend, tmp_path):
    from fixtures_labelstudio import LabelStudioRest

    address, b = backend(ImageSource(ls_url=ls_server.url, token=ls_server.token))
    ls = LabelStudioRest(ls_server.url, ls_server.token)
    project = ls.call(
        "POST",
        "/api/projects",
        json={
            "title": f"Backend auth {tmp_path.name[-10:]}",
            "label_config": interactive_labeling_config_xml(LABELS),
        },
    )
    url = f"http://{address}"
    with pytest.raises(SednaSamError, match="refused the credentials"):
        connect_backend(
            ls_server.url, ls_server.token, project["id"], url, auth=BackendAuth("label-studio", "wrong")
        )
    ml = connect_backend(ls_server.url, ls_server.token, project["id"], url, auth=AUTH)
    assert ml["auth_method"] == "BASIC_AUTH" and "basic_auth_pass" not in ml
    assert b.label_configs  # Label Studio's /setup got through with the credentials


# ----------------------------------------------------------------------------- where images come from


def test_setup_cannot_repoint_the_token(backend, recorders, tmp_path):
    """/setup's hostname and access_token are ignored: the next image fetch does not go to
    the caller's host, with or without the operator's token. (Main adopted the hostname
    when no URL was configured and sent its token there.)"""
    attacker = recorders()
    address, b = backend(ImageSource(ls_url=None, token="operator-token"))
    status, _ = call(
        address,
        "POST",
        "/setup",
        {"project": "3.1", "hostname": attacker.url, "access_token": "theirs", "schema": "<View/>"},
        {"Authorization": BASIC},
    )
    assert status == 200 and b.images.ls_url is None and b.images.token == "operator-token"
    status, body = call(
        address, "POST", "/predict", click("/data/upload/3/abcd1234-f.png"), {"Authorization": BASIC}
    )
    assert status == 400 and "no Label Studio URL" in body["error"]
    assert attacker.requests == []


@pytest.mark.parametrize(
    "ref, message",
    [
        ("{outside}", "absolute paths are not read"),
        ("file://{outside}", "file:// references are not read"),
        ("/data/local-files/?d=../secret/s.png", "outside the document root"),
        ("/data/local-files/?d={outside}", "must be relative"),
        ("/data/local-files/?d=link/s.png", "outside the document root"),
        ("../secret/s.png", "outside the document root"),
        ("s3://bucket/s.png", "s3:// references are not read"),
    ],
)
def test_local_images_stay_under_the_document_root(ref, message, tmp_path):
    root, secret = tmp_path / "root", tmp_path / "secret"
    write_png(root / "in.png", np.zeros((8, 8, 3), np.uint8))
    write_png(secret / "s.png", np.zeros((8, 8, 3), np.uint8))
    (root / "link").symlink_to(secret)  # a symlink out of the root is outside too
    source = ImageSource(document_root=str(root))
    assert source.load("/data/local-files/?d=in.png").shape == (8, 8, 3)
    with pytest.raises(InputError, match=message):
        source.load(ref.format(outside=secret / "s.png"))


def test_urls_are_fetched_only_from_the_label_studio_origin_with_the_token(recorders):
    ls, attacker = recorders(), recorders()
    source = ImageSource(ls_url=ls.url, token="operator-token")
    assert source.load("/data/upload/3/abcd1234-f.png").shape == (24, 32, 3)
    assert source.load(f"{ls.url}/data/upload/3/abcd1234-f.png").shape == (24, 32, 3)
    assert [auth for _, _, auth in ls.requests] == ["Token operator-token"] * 2
    port = ls.url.rsplit(":", 1)[1]
    for url in (f"{attacker.url}/x.png", f"http://localhost:{port}/x.png", f"https://127.0.0.1:{port}/x.png"):
        with pytest.raises(InputError, match="not on the configured Label Studio"):
            source.load(url)
    assert attacker.requests == []


def test_label_studio_redirects_are_not_followed_and_sizes_are_capped(recorders):
    attacker = recorders()
    redirecting = recorders(redirect=f"{attacker.url}/steal.png")
    with pytest.raises(InputError, match="HTTP 302"):
        ImageSource(ls_url=redirecting.url, token="operator-token").load("/data/upload/1/abcd1234-a.png")
    assert attacker.requests == []
    big = recorders(body=b"\x89PNG" + b"\x00" * (2 << 20))
    with pytest.raises(InputError, match="over 1048576"):
        ImageSource(ls_url=big.url, max_bytes=1 << 20).load("/data/upload/1/abcd1234-a.png")


# ----------------------------------------------------------------------------- request limits


def _raw(address: str, data: bytes, read_timeout: float = 10.0) -> bytes:
    host, port = address.split(":")
    return raw_exchange(host, port, data, read_timeout)


def test_request_bodies_are_bounded(backend, tmp_path):
    address, _ = backend(ImageSource(document_root=str(tmp_path)), max_body=64 << 10, timeout_s=2.0)
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n"
    started = time.monotonic()
    huge = _raw(address, (head + "Content-Length: 999999999999\r\n\r\n").encode())
    assert huge.startswith(b"HTTP/1.0 413"), huge[:200]
    negative = _raw(address, (head + "Content-Length: -5\r\n\r\n").encode())
    assert negative.startswith(b"HTTP/1.0 400"), negative[:200]
    garbage = _raw(address, (head + "Content-Length: lots\r\n\r\n").encode())
    assert garbage.startswith(b"HTTP/1.0 400"), garbage[:200]
    chunked = _raw(address, (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode())
    assert chunked.startswith(b"HTTP/1.0 411"), chunked[:200]
    assert time.monotonic() - started < 8  # none of them pinned a thread until a timeout
    status, body = call(address, "POST", "/predict", raw=b" " * (200 << 10), headers={"Authorization": BASIC})
    assert status == 413 and "over the limit" in body["error"]


def test_slow_clients_time_out_and_a_full_pool_answers_503(backend, tmp_path):
    address, _ = backend(ImageSource(document_root=str(tmp_path)), workers=2, queue=1, timeout_s=1.5)
    host, port = address.split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(3)]  # 2 served + 1 waiting
    try:
        time.sleep(0.3)
        busy = _raw(address, b"GET /health HTTP/1.0\r\n\r\n")
        assert busy.startswith(b"HTTP/1.1 503"), busy[:200]
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10  # the read timeout frees the slots
    while time.monotonic() < deadline:
        if _raw(address, b"GET /health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200"):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the server did not recover from idle connections")
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(
        f"POST /setup HTTP/1.1\r\nAuthorization: {BASIC}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    stalled.settimeout(10)
    answer = stalled.recv(4096)  # the body never comes: 408 after the read timeout, not a pinned thread
    stalled.close()
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]


def test_backend_images_over_the_pixel_cap_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", "100")
    write_png(tmp_path / "f.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(InputError, match="over the cap of 0.0001 MP"):
        ImageSource(document_root=str(tmp_path)).load("/data/local-files/?d=f.png")
