"""Sedna's knowledge-base (KB) server for the whole test session (``sedna_kb_server``).

``scripts/install.sh`` installs Sedna's lib (kubeedge/sedna ``lib/``) into ``.venv`` and the
KB server's set into ``.venv-kb`` (pydantic<2 keeps it out of ``.venv``), both with
``scripts/install-sedna-lib.sh``. The server is the lib's own ``sedna/service/run_kb.py``,
run from ``.venv-kb`` on a free loopback port with its files and sqlite database in a temp
dir, as Sedna's KB image runs it. A missing lib or ``.venv-kb`` fails the tests that need
them; they skip only when ``SEDNA_SAM_SKIP_SEDNA_LIB`` is set (install.sh then installed
neither).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KB_VENV = ROOT / ".venv-kb"
KB_PYTHON = KB_VENV / "bin" / "python"
SKIP_ENV = "SEDNA_SAM_SKIP_SEDNA_LIB"
KB_START_TIMEOUT_S = 60.0


def require_sedna_install() -> None:
    """Skip when the Sedna lib was skipped on purpose; fail when ``.venv-kb`` is missing."""
    if os.environ.get(SKIP_ENV):
        pytest.skip(f"{SKIP_ENV} is set: scripts/install.sh installed no Sedna lib and no .venv-kb")
    if not KB_PYTHON.exists():
        pytest.fail(f"{KB_PYTHON} is missing: run `bash scripts/install.sh` (or set {SKIP_ENV}=1 to skip)")


def sedna_package_dir(python: Path | str) -> Path:
    """Directory of the ``sedna`` package installed for ``python`` (found without importing it)."""
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util; s = importlib.util.find_spec('sedna'); "
            "print((list(s.submodule_search_locations or []) or [''])[0] if s else '')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT.parent,  # not the project root: nothing there may shadow `sedna`
    )
    assert out.returncode == 0, out.stderr
    if not out.stdout.strip():
        pytest.fail(f"no `sedna` package for {python}: run `bash scripts/install.sh`")
    return Path(out.stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Sedna's KB server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"Sedna's KB server did not listen on port {port} within {timeout_s:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # the server thread has no signal handlers: SIGTERM ends it
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def sedna_kb_server(tmp_path_factory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``, what Sedna's ``KB_SERVER`` holds) of Sedna's KB
    server from ``.venv-kb``; its API is under ``/knowledgebase`` (``/file/upload``,
    ``/file/download``, ``/update``, ...). Stopped when the session ends."""
    require_sedna_install()
    run_kb = sedna_package_dir(KB_PYTHON) / "service" / "run_kb.py"
    assert run_kb.is_file(), f"{run_kb} is missing: the lib in .venv-kb is not kubeedge/sedna's"
    work = tmp_path_factory.mktemp("sedna-kb")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
        "KnowledgeBaseServer": base,
        "KnowledgeBasePath": str(work / "kb"),
        "KB_URL": f"sqlite:///{work / 'kb.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    log = work / "kb-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(KB_PYTHON), str(run_kb)], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(proc, port, log, KB_START_TIMEOUT_S)
        yield base
    finally:
        stop(proc)
