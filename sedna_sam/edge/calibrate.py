"""Thresholds from known data, and the edge config file that carries them with the model.

``<model dir>/sedna_sam_edge.json`` (written atomically, read by the worker and
reloaded with the model)::

    {"scorer": "msp",                       # the scorer the worker uses
     "scorers": {"msp": {"threshold": 0.41, "params": {}, "target_rate": 0.05,
                         "calibrated_on": "known/", "frames": 200,
                         "score_quantiles": {"0.5": ..., "0.9": ..., "0.99": ...}},
                 ...},
     "calibrated_at": "2026-...Z"}

Calibration runs the model over frames it is known to handle, computes every scorer's
score, and sets each threshold at the (1 - target_rate) quantile: on data like the
known set, about ``target_rate`` of frames get flagged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.edge.scorers import SCORERS, Scorer
from sedna_sam.errors import BatchReport, SednaSamError
from sedna_sam.storage import atomic_write_json

log = logging.getLogger(__name__)

EDGE_CONFIG_NAME = "sedna_sam_edge.json"
DEFAULT_SCORER = "msp"


def edge_config_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / EDGE_CONFIG_NAME


def read_edge_config(model_dir: str | Path) -> dict[str, Any]:
    """The model's edge config, ``{}`` when there is none."""
    path = edge_config_path(model_dir)
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SednaSamError(f"{path}: not valid JSON ({exc}); fix or delete it and calibrate again") from None
    if not isinstance(config, dict):
        raise SednaSamError(f"{path}: expected a JSON object")
    return config


def write_edge_config(model_dir: str | Path, config: dict[str, Any]) -> Path:
    return atomic_write_json(edge_config_path(model_dir), config, indent=2)


def scorer_from_config(
    config: dict[str, Any], name: str | None = None, threshold: float | None = None
) -> tuple[Scorer, bool]:
    """(scorer, calibrated): the named (or configured, or default) scorer with the
    threshold given, else the calibrated one, else the class default (calibrated=False)."""
    name = name or config.get("scorer") or DEFAULT_SCORER
    entry = (config.get("scorers") or {}).get(name, {})
    cls = SCORERS.get(name)
    params = dict(entry.get("params") or {})
    if threshold is not None:
        return cls(threshold=threshold, **params), True
    if "threshold" in entry:
        return cls(threshold=float(entry["threshold"]), **params), True
    return cls(**params), False


def thresholds_for_rate(scores: dict[str, list[float]], target_rate: float) -> dict[str, float]:
    """Per scorer, the score above which ``target_rate`` of the given scores lie."""
    if not 0.0 < target_rate < 1.0:
        raise SednaSamError(f"--target-rate must be between 0 and 1 (exclusive), got {target_rate}")
    return {
        name: float(np.quantile(np.asarray(v, np.float64), 1.0 - target_rate))
        for name, v in scores.items()
        if v
    }


def calibrate(
    model_spec: str | Path,
    data_dir: str | Path,
    target_rate: float = 0.05,
    scorer: str | None = None,
    device: str | None = None,
    max_frames: int | None = None,
) -> tuple[dict[str, Any], BatchReport]:
    """Score every image in ``data_dir`` with every scorer and write the thresholds for
    ``target_rate`` into the model's edge config. Returns (config, report)."""
    from tqdm import tqdm

    from sedna_sam.edge.model import resolve_model_dir
    from sedna_sam.errors import InputError
    from sedna_sam.images import read_image_rgb
    from sedna_sam.segformer import load_segformer
    from sedna_sam.storage import list_images

    model_dir = resolve_model_dir(str(model_spec))
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SednaSamError(f"{data_dir}: not a directory of known images")
    images = list_images(data_dir)[: max_frames or None]
    if not images:
        raise SednaSamError(f"{data_dir}: no images to calibrate on")
    if scorer is not None:
        SCORERS.get(scorer)  # fail early on a typo
    model = load_segformer(model_dir, device)
    instances = {name: SCORERS.create(name) for name in SCORERS.names()}
    scores: dict[str, list[float]] = {name: [] for name in instances}
    report = BatchReport("frames")
    for path in tqdm(images, desc="calibrate", unit="frame"):
        try:
            image = read_image_rgb(path)
        except InputError as exc:
            report.fail(str(path), str(exc))
            continue
        logits = model.logits([image])
        for name, inst in instances.items():
            scores[name].append(inst.score(logits[0]))
        report.ok()
    if not report.done:
        raise SednaSamError(f"{data_dir}: none of the {len(images)} images could be read")
    thresholds = thresholds_for_rate(scores, target_rate)
    config = read_edge_config(model_dir)
    if scorer:
        config["scorer"] = scorer
    config.setdefault("scorer", DEFAULT_SCORER)
    entries = config.setdefault("scorers", {})
    for name, thr in thresholds.items():
        arr = np.asarray(scores[name])
        entries[name] = {
            "threshold": thr,
            "params": instances[name].params(),
            "target_rate": target_rate,
            "calibrated_on": str(data_dir),
            "frames": int(arr.size),
            "flag_rate_on_known": float((arr >= thr).mean()),
            "score_quantiles": {
                q: float(np.quantile(arr, float(q))) for q in ("0.05", "0.5", "0.9", "0.95", "0.99")
            },
        }
    config["calibrated_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    write_edge_config(model_dir, config)
    log.info(
        "calibrated on %d frames (target rate %.3f): %s -> %s",
        report.done,
        target_rate,
        ", ".join(f"{k}={v:.6g}" for k, v in thresholds.items()),
        edge_config_path(model_dir),
    )
    return config, report
