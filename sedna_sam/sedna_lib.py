"""kubeedge/sedna's optional Python lib: is it installed (and is it Sedna's), which release,
and our plug-ins in its ClassFactory.

Sedna's Python lib is optional: ``scripts/install-sedna-lib.sh`` installs it from the
kubeedge/sedna repository's ``lib/`` (release v0.7.0) in our images and in development
(``pip install sedna`` gets an unrelated package). :func:`sedna_lib` try-imports it; when
it is there and a Sedna job started the process
(:func:`sedna_sam.sedna_compat.under_sedna`), the workers run through it
(:mod:`sedna_sam.sedna_job`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def sedna_lib() -> Any | None:
    """The kubeedge/sedna lib's ``sedna`` package, or None when it is not installed.

    A package named ``sedna`` without ``sedna.core.lifelong_learning`` (the unrelated
    PyPI one) counts as absent, with a warning. The lib counts as present only when
    ``sedna.core.lifelong_learning`` (what the Sedna path runs) and
    ``sedna.common.class_factory`` (where plug-ins register) import; that takes a while
    (the result is cached), and a lib whose requirements are missing counts as absent,
    with a warning.
    """
    try:
        module = importlib.import_module("sedna")
    except ImportError:
        return None
    except Exception as exc:  # the lib imports many things at import time; report, don't crash
        log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    try:
        importlib.import_module("sedna.core.lifelong_learning")
        importlib.import_module("sedna.common.class_factory")
    except ModuleNotFoundError as exc:
        if exc.name in ("sedna.core", "sedna.core.lifelong_learning", "sedna.common"):
            log.warning(
                "the package named `sedna` at %s is not KubeEdge Sedna's lib (no %s; PyPI's `sedna` "
                "is an unrelated project); running without it",
                getattr(module, "__file__", "?"),
                exc.name,
            )
        else:
            log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    except Exception as exc:  # e.g. a requirement of the lib missing or too new
        log.warning("the sedna lib is installed but fails to import (%s); running without it", exc)
        return None
    return module


def sedna_lib_version() -> str | None:
    """Which kubeedge/sedna release is installed, or None when the lib is absent.

    The line ``scripts/install-sedna-lib.sh`` records in ``SEDNA_SAM_SOURCE_TAG`` next to
    the installed package (``"v0.7.0 sha256:..."``: tag, then source), since the lib's
    own version says 0.4.1 at v0.7.0; else ``"unknown (lib version X)"`` from
    ``sedna.__version__``. A ``sedna`` without ``core/lifelong_learning`` (the unrelated
    PyPI package) counts as absent. Reads files only, except for the fallback, which
    imports ``sedna``.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("sedna")
    except (ImportError, ValueError):  # a broken parent or a module without __spec__
        return None
    dirs = [
        d
        for d in (spec.submodule_search_locations or [] if spec else [])
        if os.path.isfile(os.path.join(d, "core", "lifelong_learning", "__init__.py"))
    ]
    if not dirs:
        return None
    try:
        with open(os.path.join(dirs[0], "SEDNA_SAM_SOURCE_TAG"), encoding="utf-8") as f:
            line = f.readline().strip()
    except OSError:
        line = ""
    if line:
        return line
    try:
        version = getattr(importlib.import_module("sedna"), "__version__", None)
    except Exception:  # the lib imports many things at import time
        version = None
    return f"unknown (lib version {version or '?'})"


def sedna_available() -> bool:
    return sedna_lib() is not None


def register_utd_plugin(alias: str, cls: type) -> bool:
    """Register ``cls`` with Sedna's ClassFactory as ``ClassType.UTD`` (unseen-sample
    recognition) under ``alias``; idempotent. False when the lib is absent.

    Sedna builds the plug-in as ``cls(task_index, estimator=..., **param)`` and calls it
    with a ``BaseDataSource``; it must return ``(seen_samples, unseen_samples)``.
    """
    if not sedna_available():
        return False
    from sedna.common.class_factory import ClassFactory, ClassType  # type: ignore[import-not-found]

    if not ClassFactory.is_exists(ClassType.UTD, alias):
        ClassFactory.register_cls(cls, ClassType.UTD, alias=alias)
        log.debug("registered Sedna UTD plug-in %s", alias)
    return True
