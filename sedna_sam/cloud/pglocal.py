"""A throwaway PostgreSQL server on this machine, for tests, benches and trying several
``cloud serve`` replicas without a cluster: Debian's ``postgresql`` package, a fresh
data directory, a free loopback port, its own unix-socket directory, gone when stopped.

PostgreSQL refuses to run as root, so as root the server runs as the unprivileged
``postgres`` user (Debian's package creates it), with its files in a temporary directory
that user owns. Its binaries live under ``/usr/lib/postgresql/<version>/bin`` (not on
PATH on Debian): found there, on PATH, or at ``$SEDNA_SAM_PG_BIN``.

Not for production: use a managed PostgreSQL or an operator in the cluster.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

ENV_BIN = "SEDNA_SAM_PG_BIN"
RUN_AS = "postgres"  # the unprivileged user a root process runs the server as


def find_bin_dir(explicit: str | None = None) -> Path:
    """Directory holding ``initdb`` and ``postgres``: ``explicit``, ``$SEDNA_SAM_PG_BIN``,
    PATH, then the newest ``/usr/lib/postgresql/<version>/bin``."""
    for candidate in (explicit, os.environ.get(ENV_BIN)):
        if candidate:
            if not (Path(candidate) / "initdb").is_file():
                raise SednaSamError(
                    f"{candidate}: no initdb there (set ${ENV_BIN} to PostgreSQL's bin directory)"
                )
            return Path(candidate)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # Debian links initdb into PATH at most
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    raise SednaSamError(
        "PostgreSQL is not installed (no initdb on PATH, in /usr/lib/postgresql/*/bin or $SEDNA_SAM_PG_BIN): "
        "apt-get install postgresql (scripts/install.sh does)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    """A running server. ``url()`` names a database on it (with the password: keep it out
    of logs, :func:`sedna_sam.cloud.queue_store.redact_url`)."""

    base: Path
    port: int
    user: str
    password: str = field(repr=False)
    bin_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.base / "sockets"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be letters, digits and _: {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, remove: bool = True) -> None:
        """Fast shutdown (SIGINT: sessions ended, no recovery at next start), SIGKILL if
        that takes over 30 s; then the files go."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.process = None
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)


def start_local_postgres(
    *,
    durable: bool = True,
    wait_s: float = 60.0,
    max_connections: int = 200,
    bin_dir: str | None = None,
) -> LocalPostgres:
    """Initialise and start a server; returns once it accepts connections.

    ``durable=False`` turns fsync and synchronous commit off (tests: a crash of the
    machine loses the database, which a test does not care about); benches keep the
    defaults, so they measure what a real server does. Raises :class:`SednaSamError`
    saying why when PostgreSQL is missing or does not start (its log's tail included).
    """
    bins = find_bin_dir(bin_dir)
    as_root = os.geteuid() == 0
    user_kw: dict = {}
    if as_root:
        try:
            runner = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise SednaSamError(
                f"running as root, PostgreSQL needs the unprivileged user {RUN_AS!r} (Debian's postgresql "
                "package creates it)"
            ) from None
        user_kw = {"user": runner.pw_uid, "group": runner.pw_gid}
    base = Path(tempfile.mkdtemp(prefix="sedna-sam-pg-"))  # under /tmp: reachable by that user
    password = secrets.token_urlsafe(16)
    server = LocalPostgres(base, 0, "sedna_sam", password, bins)
    try:
        server.socket_dir.mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if as_root:
            for path in (base, server.socket_dir, pwfile):
                os.chown(path, user_kw["user"], user_kw["group"])
        data = base / "data"
        init = subprocess.run(
            [str(bins / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C", "-N"],
            capture_output=True, text=True, timeout=120, cwd=base, **user_kw,
        )  # fmt: skip
        pwfile.unlink()
        if init.returncode != 0:
            raise SednaSamError(f"initdb failed: {(init.stderr or init.stdout).strip()[-800:]}")
        settings = {"max_connections": str(max_connections), "listen_addresses": "127.0.0.1"}
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for _ in range(3):  # the free port may be taken between choosing and binding
            server.port = _free_port()
            args = [
                str(bins / "postgres"),
                "-D",
                str(data),
                "-p",
                str(server.port),
                "-k",
                str(server.socket_dir),
            ]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            with open(server.log_path, "ab") as logf:
                if as_root:
                    os.chown(server.log_path, user_kw["user"], user_kw["group"])
                server.process = subprocess.Popen(
                    args, stdout=logf, stderr=subprocess.STDOUT, cwd=base, start_new_session=True, **user_kw
                )
            if _wait_ready(server, wait_s):
                log.info("PostgreSQL on 127.0.0.1:%s (data in %s)", server.port, data)
                return server
            server.stop(remove=False)
        tail = server.log_path.read_text(errors="replace")[-1500:] if server.log_path.exists() else ""
        raise SednaSamError(f"PostgreSQL did not start; its log ends with:\n{tail}")
    except BaseException:
        server.stop()
        raise


def _wait_ready(server: LocalPostgres, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    isready = str(server.bin_dir / "pg_isready")
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        probe = subprocess.run(
            [isready, "-h", "127.0.0.1", "-p", str(server.port), "-q"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return True
        time.sleep(0.2)
    return False
