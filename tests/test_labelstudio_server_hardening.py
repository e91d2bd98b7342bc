"""`ls up` keeps Label Studio's secrets private and its telemetry off (issue 12, finding 5):
on today's main the data dir was 0755 and label_studio.sqlite3 0644, so another local user
could read the API token and the webhook secret from the database, and the server tried
to report errors to an outside Sentry project."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sedna_sam.labelstudio.server import DATABASE_FILE, NO_TELEMETRY_ENV


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_and_database_are_private(ls_server):
    data_dir = Path(ls_server.data_dir)
    assert mode(data_dir) == 0o700
    database = data_dir / DATABASE_FILE
    assert database.exists() and mode(database) & 0o077 == 0  # made under umask 077
    for name in ("api-token", "password"):
        assert mode(data_dir / name) == 0o600


def test_label_studio_runs_without_error_telemetry(ls_server):
    environ = Path(f"/proc/{ls_server.server.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
    for name, value in NO_TELEMETRY_ENV.items():
        assert env.get(name) == value, name
    assert NO_TELEMETRY_ENV["SENTRY_DSN"] == "" and NO_TELEMETRY_ENV["FRONTEND_SENTRY_DSN"] == ""


def test_an_existing_data_dir_is_made_private_too(tmp_path):
    """`ls up --data-dir ~/ls` on a directory that exists with 0755: tightened before the
    server writes secrets into it (no server needed: the executable is missing)."""
    from sedna_sam.errors import SednaSamError
    from sedna_sam.labelstudio.server import start_server

    data = tmp_path / "ls"
    data.mkdir(mode=0o755)
    (data / DATABASE_FILE).write_bytes(b"")
    (data / DATABASE_FILE).chmod(0o644)
    with pytest.raises(SednaSamError):
        start_server(data, executable=str(tmp_path / "no-label-studio"), wait_s=1)
    assert mode(data) == 0o700 and mode(data / DATABASE_FILE) == 0o600
