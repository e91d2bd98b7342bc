"""Sedna's lib as scripts/install.sh installs it (scripts/install-sedna-lib.sh, the recipe the
Dockerfiles run too): ``.venv`` holds the kubeedge/sedna lib with the recorded release tag,
``.venv-kb`` holds the knowledge-base server's set, and that server really starts and
stores and serves a file. Skipped only with ``SEDNA_SAM_SKIP_SEDNA_LIB`` set; a missing lib
fails."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from fixtures_sedna import KB_PYTHON, ROOT, require_sedna_install, sedna_package_dir

from sedna_sam import sedna_lib

REF = os.environ.get("SEDNA_REF", "v0.7.0")  # what install.sh installed (install-sedna-lib.sh's default)
VENDORED = ROOT.parent / "shared" / "vendor" / f"sedna-lib-{REF}.tar.gz"
SCRIPT = ROOT / "scripts" / "install-sedna-lib.sh"


@pytest.fixture(autouse=True)
def _installed():
    require_sedna_install()


def recorded_tag(package_dir: Path) -> str:
    tag_file = package_dir / "SEDNA_SAM_SOURCE_TAG"
    assert tag_file.is_file(), f"{tag_file} is missing: the lib was not installed by install-sedna-lib.sh"
    return tag_file.read_text(encoding="utf-8").strip()


def expected_source() -> str | None:
    """The source id install-sedna-lib.sh records when it used the vendored snapshot (CI)."""
    if os.environ.get("SEDNA_LIB_SRC") or not VENDORED.is_file():
        return None
    return "sha256:" + hashlib.sha256(VENDORED.read_bytes()).hexdigest()


def check_tag(tag: str) -> None:
    assert tag.split()[0] == REF, f"recorded {tag!r}, expected release {REF}"
    source = expected_source()
    if source is not None:
        assert tag.split()[1] == source, f"recorded {tag!r}, expected the vendored snapshot {source}"


def test_venv_has_the_kubeedge_lib_with_the_recorded_tag():
    spec = importlib.util.find_spec("sedna")
    assert spec is not None, "no `sedna` in .venv: run `bash scripts/install.sh`"
    package_dir = Path(next(iter(spec.submodule_search_locations or []), ""))
    assert (package_dir / "core" / "lifelong_learning" / "__init__.py").is_file(), (
        f"{spec.origin} is not kubeedge/sedna's lib (PyPI's `sedna` is an unrelated package)"
    )
    assert Path(sys.prefix) in package_dir.parents, f"{package_dir} is not in this venv ({sys.prefix})"
    tag = recorded_tag(package_dir)
    check_tag(tag)
    assert sedna_lib.sedna_lib_version() == tag
    # The worker path imports in a fresh interpreter (the lib's version still says 0.4.1).
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sedna; from sedna.core.lifelong_learning import LifelongLearning; print(sedna.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT.parent,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "sedna.__version__ is empty"


def test_kb_venv_imports_the_kb_server():
    code = (
        "import json, importlib.metadata as m\n"
        "from sedna.service.server.knowledgeBase.server import KBServer\n"
        "print(json.dumps({p: m.version(p) for p in ('fastapi', 'pydantic', 'SQLAlchemy', 'uvicorn')}))\n"
    )
    out = subprocess.run(
        [str(KB_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT.parent,
        env={**os.environ, "KB_URL": "sqlite://"},  # in memory: the import creates the engine
    )
    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    assert versions["pydantic"].startswith("1."), versions
    assert versions["SQLAlchemy"].startswith("1."), versions
    assert tuple(int(x) for x in versions["fastapi"].split(".")[:2]) < (0, 100), versions
    check_tag(recorded_tag(sedna_package_dir(KB_PYTHON)))


def test_the_recipe_reruns_as_a_quick_no_op():
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(SCRIPT), "--kb-server", str(KB_PYTHON)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already installed" in out.stdout, out.stdout
    assert time.monotonic() - started < 60


def test_kb_server_stores_and_serves_a_file(sedna_kb_server):
    name = f"kb-{uuid.uuid4().hex}.bin"
    payload = os.urandom(4096)
    up = requests.post(
        f"{sedna_kb_server}/knowledgebase/file/upload",
        files={"file": (name, payload, "application/octet-stream")},
        timeout=30,
    )
    assert up.status_code == 200, up.text
    link = up.json()  # where Sedna's KBClient downloads it from, relative to /knowledgebase
    assert link == f"/file/download?files={name}&name={name}"
    down = requests.get(f"{sedna_kb_server}/knowledgebase{link}", timeout=30)
    assert down.status_code == 200, down.text
    assert down.content == payload
