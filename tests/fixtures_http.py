"""HTTP requests of the server tests (the cloud service, the interactive ML backend): one
request through the standard library, or raw bytes over a socket for what no HTTP client
would send (absurd Content-Length headers, stalled bodies)."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from email.message import Message


def http_call(
    host: str, port: int | str, method: str, path: str, body: bytes | None = None, headers=None, timeout=20.0
) -> tuple[int, bytes]:
    """(status, body) of one request on a fresh connection; an error status is an answer."""
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, payload


def fetch(
    url: str, body: bytes | None = None, headers=None, method=None, timeout=10.0
) -> tuple[int, Message, str]:
    """(status, headers, text) of one request to ``url``; an error status is an answer."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def raw_exchange(host: str, port: int | str, data: bytes, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` as is and read the answer until the server closes (or resets)."""
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
