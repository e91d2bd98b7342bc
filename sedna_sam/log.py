"""Logging set-up shared by every entry point: timestamps, levels, module names."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # Chatty third-party loggers stay quiet unless asked for.
    for name in ("urllib3", "httpx", "httpcore", "botocore", "s3fs", "fsspec", "PIL"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
