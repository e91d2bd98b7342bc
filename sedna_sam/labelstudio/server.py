"""Start and stop a local Label Studio server for one-machine use (``sedna-sam ls up``, tests).

Label Studio runs in its own virtual environment (it pins Django and many packages), so we
only ever talk to its ``label-studio`` executable: found from an explicit path, then
``$SEDNA_SAM_LABEL_STUDIO``, then ``PATH``, then ``./.venv-ls/bin/label-studio``.

The data dir holds everything the server needs to come back after a restart: its SQLite
database, ``api-token`` and ``password`` (0600, generated with :mod:`secrets`, never
printed), ``label-studio.pid`` and ``label-studio.log``. The database holds the API token
and webhook secrets too, so the data dir is 0700 and the server runs with umask 077 (its
files are its user's only). Label Studio's error reporting to an outside service and its
usage analytics are turned off (:data:`NO_TELEMETRY_ENV`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sedna_sam.errors import SednaSamError
from sedna_sam.formats.ls_images import DOCUMENT_ROOT_ENV, SERVING_ENV
from sedna_sam.labelstudio.http import TOKEN_ENV, URL_ENV, health_ok, httpx_module

log = logging.getLogger(__name__)

ENV_EXECUTABLE = "SEDNA_SAM_LABEL_STUDIO"
DEFAULT_USERNAME = "admin@example.com"
TOKEN_FILE = "api-token"
PASSWORD_FILE = "password"
PID_FILE = "label-studio.pid"
LOG_FILE = "label-studio.log"
# Switches a one-machine set-up needs so Label Studio may call an ML backend / webhook on
# localhost (Label Studio blocks local addresses by default).
LOCAL_URL_ENV = {"SSRF_PROTECTION_ENABLED": "false", "ML_BLOCK_LOCAL_IP": "false"}
# Label Studio 1.23 reports errors to an external Sentry project (server: SENTRY_DSN, browser:
# FRONTEND_SENTRY_DSN, both with built-in defaults) and sends usage analytics
# (COLLECT_ANALYTICS); error reports can carry request data. Empty DSNs turn the reporting
# off (core/settings/label_studio.py, core/utils/sentry.py). Set for every `ls up`.
NO_TELEMETRY_ENV = {"SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false"}
DATABASE_FILE = "label_studio.sqlite3"


def find_executable(explicit: str | None = None) -> str:
    """Path of the ``label-studio`` executable: ``explicit``, ``$SEDNA_SAM_LABEL_STUDIO``,
    ``PATH``, ``./.venv-ls/bin/label-studio``, in that order."""
    candidates = [explicit, os.environ.get(ENV_EXECUTABLE), shutil.which("label-studio")]
    candidates.append(str(Path.cwd() / ".venv-ls" / "bin" / "label-studio"))
    candidates.append(str(Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"))
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(Path(cand))
    if explicit:
        raise SednaSamError(f"{explicit}: no executable label-studio there")
    raise SednaSamError(
        "label-studio executable not found (looked at $SEDNA_SAM_LABEL_STUDIO, PATH, ./.venv-ls/bin); "
        "install it in its own venv: python -m venv .venv-ls && .venv-ls/bin/pip install label-studio"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_or_create_secret(path: Path, nbytes: int = 20) -> str:
    """The secret stored in ``path``, created (hex, 0600) if missing. Tokens are 40 hex chars,
    the length Label Studio's legacy token field holds."""
    path = Path(path)
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_hex(nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the server's process group (we start it as a session leader, so its group id
    is its pid), then SIGKILL after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.2)
    log.warning("label-studio pid %d did not exit after SIGKILL", pid)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class LabelStudioServer:
    """A Label Studio process we started. ``token`` is secret: never log it."""

    url: str
    data_dir: Path
    document_root: Path
    port: int
    host: str
    username: str
    executable: str
    token_file: Path
    password_file: Path
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def alive(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the process by its pid (no-op when already gone)."""
        if self.pid is not None:
            stop_pid(self.pid, timeout_s)
            if self.process is not None:
                try:
                    self.process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
        (self.data_dir / PID_FILE).unlink(missing_ok=True)
        self.pid = None
        self.process = None

    def restart(self, wait_s: float = 180.0) -> LabelStudioServer:
        """Stop, then start again on the same port and data dir (same token, same projects)."""
        self.stop()
        fresh = start_server(
            self.data_dir,
            document_root=self.document_root,
            port=self.port,
            host=self.host,
            username=self.username,
            executable=self.executable,
            wait_s=wait_s,
            extra_env=self.extra_env,
        )
        self.pid, self.process = fresh.pid, fresh.process
        return self


def start_server(
    data_dir: str | Path,
    *,
    document_root: str | Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    username: str = DEFAULT_USERNAME,
    executable: str | None = None,
    wait_s: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> LabelStudioServer:
    """Start ``label-studio`` on ``host:port`` with its state in ``data_dir`` and wait for
    ``/health`` (first start runs migrations: ~30 s, more on a loaded machine).

    Local-files serving is on, rooted at ``document_root`` (default: ``data_dir/files``).
    The API token and the login password are generated once and kept in 0600 files in
    ``data_dir``; a restart on the same data dir reuses them. Raises SednaSamError with the
    log's tail when the server exits or does not answer within ``wait_s``.
    """
    httpx_module()  # the health probe needs it: say so before starting anything
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The database holds the API token and webhook secrets: no other local user may read them.
    data_dir.chmod(0o700)
    if (data_dir / DATABASE_FILE).exists():
        (data_dir / DATABASE_FILE).chmod(0o600)
    root = Path(document_root).resolve() if document_root else data_dir / "files"
    root.mkdir(parents=True, exist_ok=True)
    exe = find_executable(executable)
    port = port or free_port(host)
    token_file, password_file = data_dir / TOKEN_FILE, data_dir / PASSWORD_FILE
    token = read_or_create_secret(token_file)
    password = read_or_create_secret(password_file, nbytes=12)
    pid_file, log_path = data_dir / PID_FILE, data_dir / LOG_FILE
    if pid_file.exists():
        old = int(pid_file.read_text().strip() or 0)
        if old and _pid_alive(old):
            raise SednaSamError(
                f"{data_dir}: a Label Studio (pid {old}) already runs on this data dir; "
                f"stop it first (`sedna-sam ls down --data-dir {data_dir}`)"
            )
    server = LabelStudioServer(
        url=f"http://{host}:{port}",
        data_dir=data_dir,
        document_root=root,
        port=port,
        host=host,
        username=username,
        executable=exe,
        token_file=token_file,
        password_file=password_file,
        log_path=log_path,
        extra_env=dict(extra_env or {}),
    )
    env = dict(os.environ)
    env.update({SERVING_ENV: "true", DOCUMENT_ROOT_ENV: str(root)})
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), DJANGO_DB="sqlite")
    env.update(NO_TELEMETRY_ENV)
    env.update(server.extra_env)
    for name in (TOKEN_ENV, URL_ENV):  # ours, not the server's
        env.pop(name, None)
    # Credentials go by environment (label-studio reads LABEL_STUDIO_USERNAME/PASSWORD/
    # USER_TOKEN), not argv, so `ps` on a shared machine never shows them.
    env.update(LABEL_STUDIO_USERNAME=username, LABEL_STUDIO_PASSWORD=password, LABEL_STUDIO_USER_TOKEN=token)
    cmd = [
        exe, "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", host,
        "-p", str(port), "--enable-legacy-api-token",
    ]  # fmt: skip
    log.info("starting Label Studio on %s (data %s, log %s)", server.url, data_dir, log_path)
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(
            cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(data_dir), start_new_session=True, umask=0o077,
        )  # fmt: skip
    server.pid, server.process = proc.pid, proc
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise SednaSamError(
                f"label-studio exited with code {proc.returncode} before answering; "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        if health_ok(server.url):
            log.info("Label Studio ready at %s (pid %d)", server.url, proc.pid)
            return server
        time.sleep(1.0)
    server.stop()
    raise SednaSamError(
        f"label-studio did not answer {server.url}/health within {wait_s:.0f} s; "
        f"log {log_path}:\n{_tail(log_path)}"
    )


def stop_data_dir(data_dir: str | Path, timeout_s: float = 20.0) -> bool:
    """Stop the server whose pid file is in ``data_dir``; False when none was running."""
    pid_file = Path(data_dir) / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    running = bool(pid) and _pid_alive(pid)
    if running:
        stop_pid(pid, timeout_s)
    pid_file.unlink(missing_ok=True)
    return running
