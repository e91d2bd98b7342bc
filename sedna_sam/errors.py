"""User-facing errors and batch reports.

A :class:`SednaSamError` carries a message meant for a person: what went wrong, on which
file, and what to do. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class SednaSamError(Exception):
    """An error whose message is shown to the user as is (no traceback)."""


class InputError(SednaSamError):
    """Bad input data: the message names the file (and item) and the problem."""


@dataclass
class BatchReport:
    """Outcome of a batch over many items: a bad item never stops the batch.

    ``failed`` keeps ``(item, message)`` pairs so the summary can name each one.
    """

    what: str = "items"
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    def ok(self) -> None:
        self.done += 1

    def skip(self) -> None:
        self.skipped += 1

    def fail(self, item: str, message: str) -> None:
        self.failed.append((item, message))
        log.error("%s: %s", item, message)

    def count(self, key: str, n: int = 1) -> None:
        """Count a named event (e.g. 'tiny regions dropped') for the summary."""
        self.notes[key] = self.notes.get(key, 0) + n

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        parts = [f"{self.done} {self.what} done", f"{self.skipped} skipped", f"{len(self.failed)} failed"]
        parts += [f"{v} {k}" for k, v in sorted(self.notes.items())]
        lines = [", ".join(parts)]
        for item, message in self.failed:
            lines.append(f"  FAILED {item}: {message}")
        return "\n".join(lines)


# Network failures of the clients we use, by class name: botocore/aiobotocore/aiohttp (S3
# stores) and requests/urllib3/httpx (Label Studio). Matched by name so that this module
# imports none of them.
_CONNECTION_ERROR_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ClientOSError",
        "ServerUnreachable",  # our Label Studio client: no answer after its retries
    }
)
_HTTP_CLIENT_MODULES = ("requests", "urllib3", "httpx")


def is_connection_error(exc: BaseException | None) -> bool:
    """True when ``exc``, or what caused it, is a failure to reach a server (the store, Label
    Studio): worth waiting out and retrying, not a fault of the item being processed."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        name, module = type(exc).__name__, type(exc).__module__
        if name in _CONNECTION_ERROR_NAMES:
            return True
        if module.startswith(_HTTP_CLIENT_MODULES) and "Connect" in name:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
