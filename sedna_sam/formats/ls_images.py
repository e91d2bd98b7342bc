"""Where a Label Studio task's image is: image references and the local-files document root.

The one module that writes and reads ``data.image`` of a task (docs/architecture.md
section 4). A reference is one of:

* ``/data/local-files/?d=<path>`` (optionally behind ``http://host``): a file under the
  server's local-files document root, :data:`DOCUMENT_ROOT_ENV` (Label Studio defaults it to
  the file-system root), served when :data:`SERVING_ENV` is ``true``;
* ``/data/upload/<project>/<8 hex>-<name>``: a file uploaded through Label Studio;
* an ``http(s)://``/``s3://`` URL or a plain path.

Converters, ``ls push`` (its idempotency key), the cloud service and the interactive
backend all decode references here. Standard library only: the converters run on a plain
install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from sedna_sam.errors import InputError
from sedna_sam.storage import image_stem

# Label Studio's own settings for local files (read by its server; we set them in `ls up`
# and name them in messages).
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
SERVING_ENV = "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
# Label Studio stores uploads as /data/upload/<project id>/<8 hex>-<original name>.
_UPLOAD_RE = re.compile(r"/data/upload/\d+/[0-9a-fA-F]{8}-(?P<name>[^/]+)$")
_LOCAL_KEY = "local:"


def resolve_document_root(explicit: str | Path | None = None) -> Path:
    """Label Studio's local-files document root: ``explicit``, else
    $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, else the file-system root (Label Studio's own
    default); resolved."""
    return Path(explicit or os.environ.get(DOCUMENT_ROOT_ENV) or os.path.abspath(os.sep)).resolve()


def local_files_value(ref: str) -> str | None:
    """The ``d`` of a local-files reference (``/data/local-files/?d=<path>``, also behind a
    host), URL-decoded and as given (it may be empty or absolute: callers decide what that
    means); None when ``ref`` is another kind of reference."""
    parsed = urlparse(ref)
    if not parsed.path.rstrip("/").endswith("/data/local-files"):
        return None
    return (parse_qs(parsed.query).get("d") or [""])[0]


def image_url(path: str | Path, image_root: str | None = None) -> str:
    """URL Label Studio loads an image from.

    ``image_root=None``: ``/data/local-files/?d=<path relative to the document root>``
    (URL-encoded; the image must lie under the root). Otherwise ``image_root`` is a plain
    prefix (``http://host/images/``, ``s3://bucket/raw/``) followed by the file name.
    """
    path = Path(path)
    if image_root is None:
        root = resolve_document_root()
        absolute = path.resolve()
        try:
            relative = absolute.relative_to(root)
        except ValueError:
            raise InputError(
                f"{path}: image is outside the Label Studio document root {root} "
                f"(set {DOCUMENT_ROOT_ENV} to a folder that contains it, or pass --image-root)"
            ) from None
        return LOCAL_FILES_PREFIX + quote(relative.as_posix(), safe="/")
    name = quote(path.name) if image_root.startswith(("http://", "https://", "/")) else path.name
    sep = "" if image_root.endswith(("/", "=")) else "/"
    return image_root + sep + name


def image_ref_to_path(ref: str) -> str:
    """The file path an image reference in a task points at.

    Decodes ``/data/local-files/?d=<url-encoded path>`` (relative to the document root,
    optionally behind ``http://host``), ``/data/upload/<project>/<8 hex>-<name>`` (gives
    ``<name>``; other upload names are kept whole), ``s3://``/``http(s)://`` URLs and plain
    paths.
    """
    ref = ref.strip()
    local = local_files_value(ref)
    if local is not None:
        if not local:
            raise InputError(f"image reference {ref!r} has no ?d=<path>")
        return str(resolve_document_root() / local.lstrip("/"))
    parsed = urlparse(ref)
    if "/data/upload/" in parsed.path:
        path = unquote(parsed.path)
        match = _UPLOAD_RE.search(path)
        return match.group("name") if match else path.rsplit("/", 1)[-1]
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob", "file") and parsed.netloc:
        return unquote(parsed.path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return ref


def stem_of_ref(ref: str) -> str:
    """Dataset stem (file name without image extension) of an image reference."""
    return image_stem(Path(image_ref_to_path(ref)).name)


def task_key(task: dict[str, Any]) -> str:
    """A task's identity by image (how ``ls push`` and the cloud service recognise a task
    the project already has): the image reference, local-files ``?d=`` decoded so the same
    image keys the same however the URL was encoded."""
    ref = str((task.get("data") or {}).get("image", ""))
    local = local_files_value(ref)
    return ref if local is None else _LOCAL_KEY + local.lstrip("/")


def local_image_path(task: dict[str, Any], document_root: Path) -> Path | None:
    """File a local-files task points at under ``document_root`` (None for other URLs)."""
    key = task_key(task)
    return document_root / key[len(_LOCAL_KEY) :] if key.startswith(_LOCAL_KEY) else None
