"""A real PostgreSQL server for the whole test session (``pg_server``) and a fresh
database per test (``pg_url``); ``any_queue_url`` gives each queue test a SQLite file or a
PostgreSQL database, so one contract runs against both backends.

The server is Debian's ``postgresql`` (scripts/install.sh installs it), started by
:func:`sedna_sam.cloud.pglocal.start_local_postgres` in a temporary data directory on a
free loopback port, as the unprivileged ``postgres`` user when the tests run as root.
When it cannot start the tests that need it skip with the reason, except with
``SEDNA_SAM_REQUIRE_POSTGRES=1`` (set in CI), where they fail.
"""

from __future__ import annotations

import itertools
import os

import pytest

from sedna_sam.errors import SednaSamError

_databases = itertools.count()


def _unavailable(reason: str):
    if os.environ.get("SEDNA_SAM_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL required (SEDNA_SAM_REQUIRE_POSTGRES=1) but: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def pg_server():
    from sedna_sam.cloud.pglocal import start_local_postgres

    try:
        import psycopg  # noqa: F401 - the queue's driver
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'psycopg[binary]')")
    try:
        server = start_local_postgres(durable=False)
    except SednaSamError as exc:
        _unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """URL of a new, empty database on the session's server."""
    return pg_server.create_database(f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_queue_url(request, tmp_path) -> str:
    """A fresh queue URL of each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/queue.sqlite"
    return request.getfixturevalue("pg_url")
