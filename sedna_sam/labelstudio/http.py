"""The one HTTP stack for talking to Label Studio: httpx (the ``ls`` extra), built here.

Everything that calls Label Studio (the REST client, the ML-backend connection, the
interactive backend's image fetches, ``ls up``'s health probe, ``doctor``) gets its
``httpx.Client`` from :func:`open_client` and sends through :func:`send_with_retries`, so timeouts,
retries and error messages are the same everywhere:

* connection errors (the request never reached the server) are retried by httpx's
  transport (``HTTPTransport(retries=...)``), which is safe for every method;
* 429 and 5xx answers (a restarting server, SQLite's "database is locked") are retried by
  :func:`send_with_retries` with exponential backoff;
* an error after a request may have reached the server (a read timeout, a connection cut
  mid-answer) is not resent: an import is not idempotent, and rerunning a command resumes
  it instead (``ls push`` skips the tasks the project already has).

httpx is imported lazily, so the converters, which import this package's neighbours, run
on a plain install; without it a command stops with "pip install 'sedna-sam[ls]'". The
token only ever goes in the ``Authorization`` header: never logged, never in an error.
"""

from __future__ import annotations

import logging
import os
import time
from types import ModuleType
from typing import TYPE_CHECKING

from sedna_sam.deps import need
from sedna_sam.errors import SednaSamError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
DEFAULT_TIMEOUT_S = 120.0  # an export of a big project takes a while


class LabelStudioError(SednaSamError):
    """Label Studio answered with an error (message says what to do)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(LabelStudioError):
    """No answer (connection refused/reset, timeout, 429/5xx) after all retries."""


def httpx_module() -> ModuleType:
    """httpx, or :class:`SednaSamError` saying which extra installs it."""
    return need("httpx", "ls", "Label Studio's API")


def open_client(
    url: str,
    token: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float | None = None,
    retries: int = 5,
    follow_redirects: bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` on ``url`` (relative paths join onto it), sending ``token`` as
    Label Studio's ``Authorization: Token ...`` when given; ``timeout_s`` for each step of a
    request (``connect_timeout_s`` for connecting, when given); connection errors are retried
    ``retries`` times by the transport. Close it (or use it as a context manager)."""
    httpx = httpx_module()
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Token {token}"} if token else {},
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s or timeout_s),
        follow_redirects=follow_redirects,
        transport=httpx.HTTPTransport(retries=retries),
    )


def retryable(status: int) -> bool:
    """Answers worth asking again: rate limiting and server-side errors."""
    return status == 429 or status >= 500


def send_with_retries(
    http: httpx.Client, method: str, path: str, *, retries: int = 5, backoff_s: float = 0.5, **kw
) -> httpx.Response:
    """One request through ``http``; a 429/5xx answer is retried ``retries`` times, sleeping
    ``backoff_s * 2**i``. Returns the last response whatever its status (see
    :func:`check_status`); :class:`ServerUnreachable` when there was no usable answer."""
    httpx = httpx_module()
    where = str(http.base_url).rstrip("/") or path
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("Label Studio %s %s: %s; retry %d/%d in %.1f s",
                        method, path, last, attempt, retries, delay)  # fmt: skip
            time.sleep(delay)
        try:
            resp = http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"Label Studio at {where} did not answer {method} {path} ({type(exc).__name__}: {exc}); "
                "is it running? Rerun the command to resume."
            ) from None
        if not retryable(resp.status_code):
            return resp
        last = f"HTTP {resp.status_code}"
    raise ServerUnreachable(
        f"Label Studio at {where} did not answer {method} {path} after {retries + 1} attempts "
        f"({last}); is it running? Rerun the command to resume."
    )


def check_status(resp: httpx.Response, method: str, path: str, url: str) -> httpx.Response:
    """``resp`` when it succeeded; else :class:`LabelStudioError` saying what to do (a
    refused token, a missing object, the server's own message). ``url``: the Label Studio
    the messages name."""
    status = resp.status_code
    if status in (401, 403):
        raise LabelStudioError(
            f"Label Studio at {url} refused the API token (HTTP {status} on {method} {path}): check "
            f"{TOKEN_ENV} / --token-file (legacy token; a server started by `sedna-sam ls up` keeps it "
            "in <data-dir>/api-token)",
            status,
        )
    if status == 404:
        raise LabelStudioError(f"Label Studio {method} {path}: not found (HTTP 404)", 404)
    if status >= 400:
        raise LabelStudioError(f"Label Studio {method} {path}: HTTP {status}: {resp.text[:500]}", status)
    return resp


def health_ok(url: str, timeout_s: float = 3.0) -> bool:
    """True when ``GET {url}/health`` answers 200 (one try: callers poll)."""
    httpx = httpx_module()
    try:
        with open_client(url, timeout_s=timeout_s, retries=0) as http:
            return http.get("/health").status_code == 200
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
        return False


def resolve_credentials(url: str | None, token: str | None) -> tuple[str, str]:
    """URL and token from the arguments, else $LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY."""
    url = url or os.environ.get(URL_ENV)
    token = token or os.environ.get(TOKEN_ENV)
    if not url:
        raise SednaSamError(f"no Label Studio URL: pass --url or set {URL_ENV}")
    if not token:
        raise SednaSamError(
            f"no Label Studio API token: set {TOKEN_ENV} (Account & Settings > Access Token, "
            "or the api-token file `sedna-sam ls up` wrote) or pass --token-file"
        )
    return url.rstrip("/"), token
