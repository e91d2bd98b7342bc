"""A real Label Studio server for the whole test session (``ls_server``).

The server runs from its own venv (``.venv-ls``; ``$SEDNA_SAM_LABEL_STUDIO`` overrides) on a
free loopback port with a temp data dir and a temp local-files document root. When it cannot
start the tests that need it skip with the reason, except with ``SEDNA_SAM_REQUIRE_LS=1``
(set in CI), where they fail. Local ML backends / webhooks are allowed (SSRF switches off),
because the interactive backend and the cloud service run on this machine too.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.errors import SednaSamError
from sedna_sam.formats.ssa import write_ssa
from sedna_sam.images import write_png
from sedna_sam.labelstudio.server import LOCAL_URL_ENV, LabelStudioServer, start_server
from sedna_sam.storage import DatasetLayout


@dataclass
class LabelStudioFixture:
    """What ``ls_server`` yields. ``client`` is a label-studio-sdk ``LabelStudio``."""

    server: LabelStudioServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def document_root(self) -> Path:
        return self.server.document_root

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def username(self) -> str:
        return self.server.username

    @property
    def password(self) -> str:
        return self.server.password

    @property
    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)

    def stop(self) -> None:
        """Stop the server (by pid). Call :meth:`restart` before the test ends."""
        self.server.stop()

    def restart(self) -> None:
        """Start it again on the same port and data dir (same token, projects, tasks)."""
        if self.server.alive():
            self.server.stop()
        self.server.restart(wait_s=240)


def _unavailable(reason: str):
    if os.environ.get("SEDNA_SAM_REQUIRE_LS") == "1":
        pytest.fail(f"Label Studio required (SEDNA_SAM_REQUIRE_LS=1) but: {reason}")
    pytest.skip(f"no Label Studio server: {reason}")


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("label-studio")
    try:
        server = start_server(
            base / "data",
            document_root=base / "files",
            wait_s=240,
            extra_env=LOCAL_URL_ENV,
        )
    except SednaSamError as exc:
        _unavailable(str(exc))
    fixture = LabelStudioFixture(server)
    try:
        yield fixture
    finally:
        server.stop()


# Small datasets for Label Studio tests: axis-aligned boxes on road, so polygons are exact.
W, H = 64, 48
ROAD, CAR, PERSON = 0, 13, 11


def class_map(i: int) -> np.ndarray:
    """Road background, one car box and one person box, shifted by ``i``."""
    m = np.full((H, W), ROAD, dtype=np.uint16)
    m[10 + i : 30 + i, 5:25] = CAR
    m[5:20, 40 - i : 50 - i] = PERSON
    return m


def make_dataset(root: Path, n: int) -> Path:
    """raw_data/ PNGs + ssa_output/ SSA files (no tasks.json: push converts first)."""
    layout = DatasetLayout(root)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(layout.raw_data / f"img{i:02d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        write_ssa(layout.ssa_json(f"img{i:02d}"), class_map(i), [])
    return root


def new_dataset(ls_server, n: int = 3) -> tuple[Path, str]:
    """A fresh dataset under the server's document root and a fresh project title."""
    name = f"ds-{uuid.uuid4().hex[:8]}"
    return make_dataset(Path(ls_server.document_root) / name, n), f"Project {name}"


class LabelStudioRest:
    """Plain REST calls tests make beside the product's client: set-up, and playing the
    annotator (accept or correct a prediction) the way a person would in the editor."""

    def __init__(self, url: str, token: str) -> None:
        import requests

        self.url, self.session = url.rstrip("/"), requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kw):
        resp = self.session.request(method, self.url + path, timeout=120, **kw)
        assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        return resp.json() if resp.content else None

    def project_tasks(self, project_id: int) -> list[dict]:
        out, page = [], 1
        while True:
            resp = self.session.get(
                f"{self.url}/api/tasks",
                params={"project": project_id, "page": page, "page_size": 100},
                timeout=60,
            )
            if resp.status_code == 404:
                return out
            tasks = resp.json()["tasks"]
            out += tasks
            if len(tasks) < 100:
                return out
            page += 1

    def annotate(self, task_id: int, relabel: str | None = None) -> dict:
        """Accept the predictions as the annotation, the first region relabelled to ``relabel``."""
        task = self.call("GET", f"/api/tasks/{task_id}")
        result = json.loads(json.dumps(task["predictions"][0]["result"]))
        assert result, "the pre-annotation gave no polygons"
        if relabel:
            result[0]["value"]["polygonlabels"] = [relabel]
        return self.call("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})

    def correct(self, annotation_id: int, relabel: str) -> dict:
        ann = self.call("GET", f"/api/annotations/{annotation_id}")
        result = ann["result"]
        result[0]["value"]["polygonlabels"] = [relabel]
        return self.call("PATCH", f"/api/annotations/{annotation_id}", json={"result": result})
