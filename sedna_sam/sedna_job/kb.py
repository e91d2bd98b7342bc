"""Sedna knowledge-base indexes (``index.pkl``): which model they name, and a local copy.

An index is a joblib pickle written by Sedna's lib: ``{"seen_task": {"task_groups":
[TaskGroup, ...], "extractor": ...}, "unseen_task": {...}, "create_time": ...}``. Each
group's ``model.model`` is where the KB server keeps the model (an http URL of the KB
server when the upload worked, else the path the train pod saved it to); each task's
``model`` is the path under the train round's OUTPUT_URL. Reading one needs the lib,
because the pickle holds the lib's classes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)


def load_index(path: str | Path) -> dict[str, Any]:
    """The unpickled index (needs kubeedge/sedna's lib)."""
    from sedna_sam.sedna_lib import sedna_available

    if not sedna_available():
        raise SednaSamError(
            f"{path}: a Sedna knowledge-base index; reading it needs kubeedge/sedna's lib "
            "(install it with scripts/install-sedna-lib.sh; the PyPI package named 'sedna' is unrelated), "
            "or pass the model directory or archive instead"
        )
    from sedna.common.file_ops import FileOps  # type: ignore[import-not-found]

    try:
        index = FileOps.load(str(path))
    except Exception as exc:  # joblib/pickle errors of every kind: say which file
        raise SednaSamError(
            f"{path}: not a readable Sedna knowledge-base index ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(index, dict) or "seen_task" not in index:
        raise SednaSamError(f"{path}: not a Sedna knowledge-base index (no seen_task)")
    return index


def seen_groups(index: dict[str, Any]) -> list[Any]:
    return list((index.get("seen_task") or {}).get("task_groups") or [])


def model_urls_of_group(group: Any) -> list[str]:
    """Every place a task group records its model, best first, without repeats."""
    urls: list[str] = []
    model = getattr(group, "model", None)
    for url in [getattr(model, "model", None)] + [
        getattr(t, "model", None) for t in getattr(group, "tasks", [])
    ]:
        if isinstance(url, str) and url and url not in urls:
            urls.append(url)
    return urls


def model_urls_from_index(path: str | Path) -> list[str]:
    """The places the index's (first) seen-task model can be loaded from."""
    groups = seen_groups(load_index(path))
    if not groups:
        raise SednaSamError(f"{path}: the knowledge base has no trained model (no seen task group)")
    if len(groups) > 1:
        log.warning("%s: %d task groups; sedna-sam trains one, using the first", path, len(groups))
    urls = model_urls_of_group(groups[0])
    if not urls:
        raise SednaSamError(f"{path}: the knowledge base's task group records no model file")
    return urls


def stage_model(urls: list[str], dest_dir: str | Path) -> Path:
    """Copy the first reachable of ``urls`` into ``dest_dir`` (keeping its file name) with
    the lib's FileOps (local paths, the KB server's http URLs, s3:// with Sedna's env).

    Sedna's backend saves a retrained model next to the file it loaded it from, and the
    knowledge manager then moves that file away: the previous round's model must be a
    private copy, never the file the previous round's index points at.
    """
    from sedna.common.file_ops import FileOps  # type: ignore[import-not-found]

    from sedna_sam.model_files import url_file_name

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        dest = dest_dir / url_file_name(url)
        try:
            if Path(url).is_file():
                shutil.copyfile(url, dest)
            else:
                FileOps.download(url, str(dest))
        except Exception as exc:  # every transport fails its own way; try the next place
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        if dest.is_file() and dest.stat().st_size > 0:
            log.info("previous model %s -> %s", url, dest)
            return dest
        errors.append(f"{url}: nothing there")
    raise SednaSamError(
        "cannot fetch the previous round's model from the knowledge base:\n  " + "\n  ".join(errors)
    )
