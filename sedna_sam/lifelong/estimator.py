"""Sedna's estimator interface over our trainer and evaluator.

:class:`SegformerEstimator` has the methods Sedna's ``LifelongLearning`` calls on an
estimator: ``train``, ``evaluate``, ``predict``, ``load``, ``save``. Sedna hands it data
sources whose ``x``/``y`` are the raw path tokens of its txt index lines; relative ones
resolve against ``data_roots``: the Dataset index's directory first (Sedna's local
controller copies its lines as they are), then the round's own index directory.

``save`` writes ONE file (:func:`sedna_sam.model_files.pack_model`): Sedna's KB client
uploads files only, and the edge downloads what the KB recorded. The archive carries the
knowledge the model was trained on (its replay pool for the next round) and the training
report; ``load`` of such an archive brings that knowledge back, so a later round replays
what earlier rounds learned without any path outside the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.lifelong import data as ds
from sedna_sam.lifelong.evaluate import evaluate_segformer
from sedna_sam.lifelong.train import TrainConfig, TrainResult, train_segformer

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "nvidia/segformer-b0-finetuned-cityscapes-1024-1024"
KNOWLEDGE_MEMBER = "knowledge_index.txt"
REPORT_MEMBER = "train_report.json"


def as_samples(data: Any, data_roots: Sequence[Path] = ()) -> list[ds.LabelledSample]:
    """Samples from what Sedna or a caller hands an estimator: Samples, (image, label)
    pairs, an index path, or a Sedna data source (``.x`` image tokens, ``.y`` label
    tokens, as its TxtDataParse reads them). Relative tokens resolve against the first of
    ``data_roots`` (then the current directory) where the file exists."""
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return ds.read_index(data, data_root=data_roots[0] if data_roots else None)
    bases = [*data_roots, Path.cwd()]
    if hasattr(data, "x") and hasattr(data, "y"):  # sedna.datasources.BaseDataSource
        xs = list(data.x)
        ys = list(data.y) if data.y is not None and len(data.y) else [None] * len(xs)
        lines = [(str(x), None if y is None else str(y)) for x, y in zip(xs, ys)]
    else:
        lines = []
        for item in data:
            if isinstance(item, ds.LabelledSample):
                lines.append((str(item.image), str(item.label) if item.label else None))
            else:
                lines.append((str(item[0]), str(item[1]) if item[1] else None))
    text = "\n".join(f"{ds.encode_path(x)} {ds.encode_path(y)}" if y else ds.encode_path(x) for x, y in lines)
    return ds.parse_index_text(text, bases, source="<training data>")


def knowledge_text(samples: Sequence[ds.LabelledSample]) -> str:
    """Absolute ``<image> <label>`` lines of the samples a model learned from."""
    out = []
    for s in samples:
        image = ds.encode_path(str(Path(s.image).absolute()))
        out.append(f"{image} {ds.encode_path(str(Path(s.label).absolute()))}" if s.label else image)
    return "".join(line + "\n" for line in out)


@dataclass
class SegformerEstimator:
    """A Segformer with Sedna's estimator methods.

    ``model_url``: the Segformer to start from (any model spec, see
    :mod:`sedna_sam.model_files`); after ``train`` or ``load`` it is the current model.
    ``replay``: samples mixed into every training batch (earlier knowledge); ``load`` of
    an archive replaces it with the archive's knowledge plus ``extra_replay``.
    ``work_dir``: where ``train`` writes its round (model, checkpoints, report).
    """

    model_url: str = DEFAULT_BASE_MODEL
    config: TrainConfig = field(default_factory=TrainConfig)
    replay: list[ds.LabelledSample] = field(default_factory=list)
    work_dir: Path = Path("sedna-sam-train")
    device: str | None = None
    progress: bool = True
    data_roots: list[Path] = field(default_factory=list)  # where relative sample paths resolve
    extra_replay: list[ds.LabelledSample] = field(default_factory=list)
    knowledge: list[ds.LabelledSample] = field(default_factory=list)  # what the current model learned from
    last_result: TrainResult | None = None
    _seg: Any = None

    def _model(self):
        if self._seg is None:
            from sedna_sam.segformer import load_segformer

            self._seg = load_segformer(self.model_url, self.device)
        return self._seg

    def train(self, train_data, valid_data=None, **kwargs) -> dict:
        """Fine-tune on ``train_data`` with replay; returns the training report (and the
        validation metrics when ``valid_data`` is given)."""
        new = as_samples(train_data, self.data_roots)
        new_keys = {(s.image, s.label) for s in new}
        replay = [s for s in self.replay if (s.image, s.label) not in new_keys]
        result = train_segformer(
            self.model_url,
            new,
            replay,
            kwargs.get("output_dir", self.work_dir),
            self.config,
            self.device,
            progress=self.progress,
        )
        self.last_result = result
        self.model_url, self._seg = str(result.model_dir), None
        learned = {(s.image, s.label): s for s in [*replay, *new]}
        self.knowledge = list(learned.values())
        out = result.to_json()
        if valid_data is not None:
            out["valid"] = self.evaluate(valid_data)
        return out

    def evaluate(self, data, **kwargs) -> dict:
        """Metrics dict (mIoU, pixel accuracy, per-class IoU, confusion) on labelled samples."""
        return evaluate_segformer(self._model(), as_samples(data, self.data_roots), self.progress).to_json()

    def predict(self, data, **kwargs) -> list[np.ndarray]:
        """(H, W) int64 class-id maps for images: (H, W, 3) uint8 arrays or image paths."""
        from sedna_sam.images import read_image_rgb

        seg = self._model()
        items = data.x if hasattr(data, "x") else data
        if isinstance(items, np.ndarray) and items.ndim == 3:
            items = [items]
        return [seg.predict_ids(read_image_rgb(x) if isinstance(x, (str, Path)) else x) for x in items]

    def load(self, model_url: str = "", **kwargs) -> None:
        """Load a model; an archive also brings back the knowledge it was trained on."""
        from sedna_sam.model_files import resolve_model

        resolved = resolve_model(model_url)
        self.model_url, self._seg = resolved.source, None
        archive = resolved.archive
        index = archive.extra(KNOWLEDGE_MEMBER) if archive else None
        if index is not None:
            self.knowledge = ds.read_index(index)
            keys = {(s.image, s.label) for s in self.knowledge}
            self.replay = self.knowledge + [s for s in self.extra_replay if (s.image, s.label) not in keys]
            log.info(
                "%s: model with the %d samples it learned from (replayed next round)",
                model_url,
                len(self.knowledge),
            )
        self._model()

    def save(self, model_path: str = "", **kwargs) -> str:
        """Save the current model as one archive file at ``model_path`` (see the module doc)."""
        from sedna_sam.model_files import pack_model, resolve_model

        extras = {KNOWLEDGE_MEMBER: knowledge_text(self.knowledge).encode()}
        if self.last_result is not None:
            extras[REPORT_MEMBER] = json.dumps(self.last_result.to_json(), indent=2).encode()
        source = resolve_model(self.model_url)
        if not source.local:  # a hub id never trained here: materialize it first
            from sedna_sam.segformer import save_segformer

            seg = self._model()
            local = Path(self.work_dir) / "base-model"
            save_segformer(seg.model, local, seg.input_size)
            source = resolve_model(str(local))
        return str(pack_model(source.path, model_path, extras))
