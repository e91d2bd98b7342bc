"""Where the interactive backend reads a task's image from: the local-files document root
or the one configured Label Studio, and nowhere else (docs/security.md).

References are decoded by :mod:`sedna_sam.formats.ls_images`; fetches go through the one
HTTP stack, :mod:`sedna_sam.labelstudio.http`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.formats.ls_images import DOCUMENT_ROOT_ENV, local_files_value
from sedna_sam.labelstudio.http import TOKEN_ENV, URL_ENV, httpx_module, open_client


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, default ports filled in."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        raise InputError(f"{url[:200]!r} has an invalid port") from None
    return scheme, (parsed.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme, 0)


@dataclass
class ImageSource:
    """Reads a task's image from its reference, and from nowhere else.

    - ``/data/local-files/?d=REL`` (also behind the Label Studio URL) and plain relative
      paths: ``document_root/REL`` when that file is there, resolved with realpath and
      required to stay under the document root; otherwise fetched from Label Studio;
    - other ``/data/...`` paths and ``http(s)://`` URLs: fetched only from the configured
      Label Studio origin (scheme, host and port equal), with the token, without following
      redirects, at most ``max_bytes``;
    - absolute paths, ``file://``, ``s3://`` and URLs of any other host are refused.

    ``ls_url`` and ``token`` come from the operator (flags, env, a Secret), never from a
    request.
    """

    ls_url: str | None = None
    token: str | None = field(default=None, repr=False)
    document_root: str | None = None
    timeout_s: float = 30.0
    max_bytes: int = 64 << 20

    def load(self, ref: str) -> np.ndarray:
        from sedna_sam.images import decode_image_rgb, read_image_rgb

        ref = str(ref).strip()
        if not ref or "\x00" in ref:
            raise InputError("empty image reference")
        parsed = urlparse(ref)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            self._check_origin(ref)
        elif scheme:
            raise InputError(
                f"image {ref[:200]!r}: {scheme}:// references are not read by the backend; serve images "
                "through Label Studio (local files under the document root, or its own URLs)"
            )
        elif ref.startswith("/") and not ref.startswith("/data/"):
            raise InputError(
                f"image {ref[:200]!r}: absolute paths are not read; put images under the local-files "
                "document root and reference them as /data/local-files/?d=<relative path>"
            )
        rel = local_files_value(ref)
        if rel is not None:
            local = self._under_root(rel, ref)
            if local is not None and local.is_file():
                return read_image_rgb(local)
        elif not scheme and not ref.startswith("/"):
            local = self._under_root(ref, ref)
            if local is None:
                raise InputError(f"image {ref[:200]!r}: no document root is configured to read it from")
            return read_image_rgb(local)
        return decode_image_rgb(self._fetch(ref), f"image {ref[:200]!r}")

    def _under_root(self, rel: str, ref: str) -> Path | None:
        """``document_root/rel`` after realpath, or None without a document root;
        :class:`InputError` when it is absolute or leaves the root."""
        if not rel:
            raise InputError(f"image reference {ref[:200]!r} has no ?d=<path>")
        if rel.startswith("/") or rel.startswith("file:"):
            raise InputError(f"image {ref[:200]!r}: the path must be relative to the document root")
        if not self.document_root:
            return None
        root = Path(os.path.realpath(self.document_root))
        local = Path(os.path.realpath(root / rel))
        if local != root and root not in local.parents:
            raise InputError(f"image {ref[:200]!r} resolves outside the document root; refused")
        return local

    def _check_origin(self, url: str) -> None:
        if not self.ls_url:
            raise InputError(
                f"image {url[:200]!r}: URLs are fetched only from Label Studio, and none is configured"
            )
        if _origin(url) != _origin(self.ls_url):
            raise InputError(
                f"image {url[:200]!r}: not on the configured Label Studio ({urlparse(self.ls_url).netloc}); "
                "the backend fetches from nowhere else"
            )

    def _fetch(self, ref: str) -> bytes:
        if not self.ls_url:
            raise InputError(
                f"image {ref[:200]!r} is served by Label Studio but no Label Studio URL is set "
                f"(--label-studio-url or {URL_ENV})"
            )
        url = ref if urlparse(ref).scheme else self.ls_url.rstrip("/") + ref
        self._check_origin(url)
        httpx = httpx_module()
        try:
            # No retries and no redirects: one request to the checked origin, nowhere else.
            with open_client(
                self.ls_url, self.token, timeout_s=self.timeout_s, connect_timeout_s=5.0, retries=0,
                follow_redirects=False,
            ) as client, client.stream("GET", url) as resp:  # fmt: skip
                if resp.status_code != 200:
                    raise InputError(f"image {ref[:200]!r}: HTTP {resp.status_code} from Label Studio")
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise InputError(f"image {ref[:200]!r}: {declared} bytes, over {self.max_bytes}")
                chunks, total = [], 0
                for chunk in resp.iter_bytes(1 << 16):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise InputError(f"image {ref[:200]!r}: more than {self.max_bytes} bytes; refused")
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise InputError(
                f"image {ref[:200]!r}: cannot fetch it from Label Studio ({type(exc).__name__})"
            ) from None
        return b"".join(chunks)


def image_source_from_env(
    ls_url: str | None = None, token: str | None = None, document_root: str | None = None
) -> ImageSource:
    """An :class:`ImageSource` from flags, falling back to LABEL_STUDIO_URL,
    LABEL_STUDIO_API_KEY and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""
    return ImageSource(
        ls_url or os.environ.get(URL_ENV),
        token or os.environ.get(TOKEN_ENV),
        document_root or os.environ.get(DOCUMENT_ROOT_ENV),
    )
