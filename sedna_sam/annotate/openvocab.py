"""Open-vocabulary labels for SAM masks: CLIP image-text similarity over any label names.

Each SAM mask is cut out of the image (its bounding box, pixels outside the mask greyed
out, padded to a square) and embedded by CLIP's image tower; each label name becomes a
prompt ("a photo of a {name}.") embedded by the text tower. The mask takes the label whose
text embedding is closest. The label names come from the labels config, so adding a class
to the config is all it takes to get it pre-annotated: nothing is retrained.

Two labelers are registered in :data:`sedna_sam.annotate.labelers.LABELERS`:

- ``clip``: every mask labelled by CLIP alone.
- ``segformer+clip``: SSA's closed-set vote first; CLIP decides only where the closed set
  is unsure (low vote share inside the mask) and for label names the closed-set model does
  not know (a mask CLIP confidently calls "scooter" becomes a scooter even where Segformer
  voted "motorcycle").

Models load from a local ``save_pretrained`` directory or a hub id through
:func:`load_clip`; :func:`build_tiny_clip` saves a random-weight CLIP with tiny dims and its
own small BPE vocabulary (no hub download) that loads through that same function.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sedna_sam.annotate.labelers import LABELERS, MaskLabels, SemanticEvidence, top_k_names
from sedna_sam.annotate.voting import MaskSet, top_class
from sedna_sam.errors import SednaSamError
from sedna_sam.labels import LabelSet

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
# Used when a labeler gets no ``clip_model`` option (e.g. ``sedna-sam annotate --labeler clip``).
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Clip:
    """A loaded CLIP model with its tokenizer and image pre-processing settings.

    ``image_size`` is the square side the vision tower takes; ``mean``/``std`` are the
    normalization of the saved image processor.
    """

    model: object
    tokenizer: object
    device: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    _text_cache: dict = field(default_factory=dict, repr=False)

    def text_features(self, texts: Sequence[str]):
        """(K, D) L2-normalized text embeddings; cached per list of texts (label names
        rarely change between images)."""
        import torch

        key = tuple(texts)
        if key not in self._text_cache:
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with torch.inference_mode():
                feats = _pooled(self.model.get_text_features(**tokens))
            self._text_cache.clear()  # one label list at a time is the common case
            self._text_cache[key] = torch.nn.functional.normalize(feats.float(), dim=-1)
        return self._text_cache[key]

    def image_features(self, crops: np.ndarray, batch_size: int = 64):
        """(N, D) L2-normalized image embeddings of (N, S, S, 3) uint8 crops, S = image_size."""
        import torch

        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size])).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                out.append(_pooled(self.model.get_image_features(pixel_values=x)).float())
        feats = torch.cat(out) if out else torch.zeros((0, self.model.config.projection_dim))
        return torch.nn.functional.normalize(feats, dim=-1)

    def class_probabilities(
        self, crops: np.ndarray, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> np.ndarray:
        """(N, K) softmax over the K label names for N crops.

        With several templates, each name's embedding is the normalized mean over its
        prompts (CLIP's prompt ensembling).
        """
        import torch

        if not names:
            raise SednaSamError("open-vocabulary labelling needs at least one label name")
        prompts = [t.format(n) for n in names for t in templates]
        text = self.text_features(prompts).view(len(names), len(templates), -1).mean(1)
        text = torch.nn.functional.normalize(text, dim=-1)
        image = self.image_features(crops)
        scale = float(self.model.logit_scale.exp().item())
        return torch.softmax(scale * image @ text.T, dim=-1).cpu().numpy()


def _pooled(output):
    """transformers 4 returns the projected features as a tensor, 5 as ``pooler_output``."""
    return output if hasattr(output, "shape") else output.pooler_output


def load_clip(spec: str | Path, device: str | None = None) -> Clip:
    """Load CLIP (model, tokenizer, image processor) from a local directory or a hub id.

    Offline, a hub id that is not in the local cache fails with a message saying what to
    download and where to put it.
    """
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from sedna_sam.segformer import default_device

    device = device or default_device()
    spec = str(spec)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise SednaSamError(f"{local}: not a CLIP model directory (no config.json)")
        source, local_only = str(local.resolve()), True
    else:
        source, local_only = spec, os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise SednaSamError(
            f"cannot load CLIP {spec!r}: {exc}\n"
            f"Without network access, download it elsewhere (e.g. `huggingface-cli download {spec} "
            f"--local-dir models/{spec.replace('/', '__')}`) and pass that directory."
        ) from None
    model.eval().to(device)
    size = int(model.config.vision_config.image_size)
    mean, std = CLIP_MEAN, CLIP_STD
    try:
        proc = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError):
        log.warning("%s has no image processor config; using CLIP's mean/std", source)
    log.info("loaded CLIP %s (image %dpx) on %s", source, size, device)
    return Clip(model, tokenizer, device, size, mean, std, source)  # type: ignore[arg-type]


def mask_crops(
    image: np.ndarray, masks: MaskSet | np.ndarray, size: int, context: float = 0.1, grey_out: bool = True
) -> np.ndarray:
    """Square crops around each mask, for CLIP.

    ``image`` (H, W, 3) uint8, ``masks`` a :class:`MaskSet` or (N, H, W) bool ->
    (N, size, size, 3) uint8. Each crop is the mask's bounding box grown by ``context`` of
    its side on every edge; pixels outside the mask are set to mid grey (so CLIP sees the
    object, not its neighbours), and the crop is padded to a square with grey before
    resizing, keeping the aspect ratio. Masks are read one at a time from their pixel
    indices (no (N, H, W) stack is decoded).
    """
    import cv2

    if not isinstance(masks, MaskSet):
        masks = MaskSet.from_dense(np.asarray(masks, dtype=bool).reshape(-1, *image.shape[:2]))
    h, w = image.shape[:2]
    out = np.full((len(masks), size, size, 3), 127, dtype=np.uint8)
    for i in range(len(masks)):
        idx = masks.indices(i)  # column-major flat indices
        if idx.size == 0:
            continue
        ys, xs = idx % h, idx // h
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        my, mx = int((y1 - y0) * context), int((x1 - x0) * context)
        y0, y1, x0, x1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
        crop = image[y0:y1, x0:x1].copy()
        if grey_out:
            inside = np.zeros(crop.shape[:2], dtype=bool)
            inside[ys - y0, xs - x0] = True
            crop[~inside] = 127
        side = max(crop.shape[0], crop.shape[1])
        square = np.full((side, side, 3), 127, dtype=np.uint8)
        oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(square, (size, size), interpolation=interp)
    return out


def combine_closed_open(
    closed_names: Sequence[str | None],
    closed_share: np.ndarray,
    open_probs: np.ndarray,
    names: Sequence[str],
    closed_known: set[str],
    min_share: float = 0.6,
    min_open_prob: float = 0.5,
) -> tuple[list[str], list[str]]:
    """Decide each mask's label from the closed-set vote and CLIP's probabilities.

    ``closed_names`` (N,) the voted closed-set class name (None where it has none),
    ``closed_share`` (N,) its vote share, ``open_probs`` (N, K) CLIP probabilities over
    ``names``; ``closed_known`` the names the closed-set model can predict.
    Returns (label name per mask, which branch decided: "closed" or "open").

    Rules: a closed-set vote with share >= ``min_share`` for a class in ``names`` stands,
    unless CLIP gives a class the closed set does not know a probability >= ``min_open_prob``
    (a new class wins where CLIP is confident). Elsewhere (closed set unsure or its class
    not in the label list) CLIP's top label is taken.
    """
    labels, branch = [], []
    name_set = set(names)
    for i, closed in enumerate(closed_names):
        k = int(open_probs[i].argmax())
        open_name, open_p = names[k], float(open_probs[i, k])
        new_class = open_name not in closed_known and open_p >= min_open_prob
        sure = closed is not None and closed in name_set and closed_share[i] >= min_share
        if sure and not new_class:
            labels.append(closed)  # type: ignore[arg-type]
            branch.append("closed")
        else:
            labels.append(open_name)
            branch.append("open")
    return labels, branch


# --- a tiny CLIP with its own vocabulary, for tests and offline demos ---------------------


def _tiny_vocabulary(words: Sequence[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (CLIP's scheme: ``</w>`` ends a word) learned from prompts over ``words``.

    Any text still tokenizes (every byte is in the base alphabet); words in the corpus
    become single tokens.
    """
    import json

    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    raw = Tokenizer(BPE(end_of_word_suffix="</w>", continuing_subword_prefix="", unk_token=specials[1]))
    raw.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    raw.train_from_iterator([t.format(w) for w in words for t in DEFAULT_TEMPLATES], trainer=trainer)
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges  # type: ignore[return-value]


def build_tiny_clip(
    out_dir: str | Path,
    words: Sequence[str] | None = None,
    seed: int = 0,
    image_size: int = 32,
    hidden: int = 32,
    vocab_size: int = 800,
) -> Path:
    """Save a CLIP with random weights and tiny dims to ``out_dir`` (``save_pretrained``
    layout: config, weights, tokenizer, image processor), loadable by :func:`load_clip`.

    Its similarities are meaningless; it exists so every code path that loads and runs a
    real CLIP runs offline in seconds. The vocabulary is learned from ``words`` (default:
    the Cityscapes and ADE20K class names).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from sedna_sam.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES

    words = list(words) if words is not None else [n for n, _ in CITYSCAPES_CLASSES] + ADE20K_CLASSES
    vocab, merges = _tiny_vocabulary(words, vocab_size)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=max(1, image_size // 4),
        ),
        projection_dim=hidden // 2,
    )
    model = CLIPModel(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out_dir)
    return out_dir


# --- labelers (registered in LABELERS; protocol in sedna_sam.annotate.labelers) ------------


def _as_clip(clip: Clip | str | Path | None, device: str | None) -> Clip:
    if clip is None:
        clip = os.environ.get("SEDNA_SAM_CLIP_MODEL") or DEFAULT_CLIP_MODEL
    return clip if isinstance(clip, Clip) else load_clip(clip, device)


def _top_names(probs: np.ndarray, names: Sequence[str], k: int) -> list[list[str]]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[names[j] for j in row] for row in order]


@LABELERS.register("clip")
class ClipLabeler:
    """Labels every mask with the label name CLIP finds closest to its crop.

    The names are the labels config's (``labels.names``), read when the labeler is made: a
    class added to the config is a new prompt, no retraining. ``clip_model`` is a
    ``save_pretrained`` directory or a hub id; without it, $SEDNA_SAM_CLIP_MODEL or
    :data:`DEFAULT_CLIP_MODEL`.
    ``class_proposals`` are CLIP's top ``num_proposals`` names.
    """

    def __init__(
        self,
        labels: LabelSet,
        clip_model: Clip | str | Path | None = None,
        device: str | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        context: float = 0.1,
        num_proposals: int = 3,
    ) -> None:
        self.labels = labels
        self.clip = _as_clip(clip_model, device)
        self.templates = tuple(templates)
        self.context = context
        self.num_proposals = num_proposals

    def probabilities(self, image: np.ndarray, masks: MaskSet | np.ndarray) -> np.ndarray:
        """(N, K) CLIP probabilities over ``labels.names`` for N masks."""
        if len(masks) == 0:
            return np.zeros((0, len(self.labels)))
        crops = mask_crops(image, masks, self.clip.image_size, self.context)
        return self.clip.class_probabilities(crops, self.labels.names, self.templates)

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels:
        probs = self.probabilities(image, masks)
        ids = (
            np.array(self.labels.ids, dtype=np.int64)[probs.argmax(1)]
            if len(masks)
            else np.zeros(0, np.int64)
        )
        ids[evidence.counts.sum(1) == 0] = -1  # empty masks own no pixel
        return MaskLabels(ids, _top_names(probs, self.labels.names, self.num_proposals))


@LABELERS.register("segformer+clip")
class SegformerClipLabeler:
    """Closed-set vote first (SSA's rule on the semantic branch's classes); CLIP decides
    only where the vote is unsure (share < ``min_share``) or between label names the
    closed-set model does not know (see :func:`combine_closed_open`).

    Which names the closed set knows: ``closed_classes`` if given (a list or a comma-separated
    string), else the ``id2label`` of
    ``semantic_model`` (the Segformer directory or hub id the engine uses), else all label
    names (then CLIP only settles unsure masks; a warning says so). CLIP runs only on the
    masks that need it. ``last_branches`` holds "closed"/"open" per mask after each call.
    """

    def __init__(
        self,
        labels: LabelSet,
        clip_model: Clip | str | Path | None = None,
        semantic_model: str | Path | None = None,
        closed_classes: Sequence[str] | str | None = None,
        device: str | None = None,
        min_share: float = 0.6,
        min_open_prob: float = 0.5,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        num_proposals: int = 3,
    ) -> None:
        self.labels = labels
        self.open = ClipLabeler(labels, clip_model, device, templates, num_proposals=num_proposals)
        if isinstance(closed_classes, str):  # --labeler-option closed_classes=road,car,...
            closed_classes = [c for c in closed_classes.split(",") if c.strip()]
        if closed_classes is None and semantic_model is not None:
            closed_classes = _model_class_names(semantic_model)
        if closed_classes is None:
            log.warning("segformer+clip: closed-set classes unknown; CLIP will only settle unsure masks")
            closed_classes = labels.names
        wanted = {n.strip().lower() for n in closed_classes}
        self.known = {n for n in labels.names if n.strip().lower() in wanted}
        self.min_share = min_share
        self.min_open_prob = min_open_prob
        self.num_proposals = num_proposals
        self.last_branches: list[str] = []

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels:
        counts = evidence.counts
        top = top_class(counts)
        total = counts.sum(1)
        share = np.where(
            total > 0, counts[np.arange(len(top)), np.maximum(top, 0)] / np.maximum(total, 1), 0.0
        )
        closed = [self.labels.id2label.get(int(t)) if t >= 0 else None for t in top]
        names = self.labels.names
        new_classes = bool(set(names) - self.known)
        need = [
            i
            for i, c in enumerate(closed)
            if total[i] > 0 and (new_classes or c not in self.known or share[i] < self.min_share)
        ]
        probs = np.zeros((len(top), len(names)))
        if need:
            probs[need] = self.open.probabilities(image, _subset(masks, need))
        # Masks CLIP did not look at keep the closed vote (their rows are all zero).
        chosen, branches = combine_closed_open(
            closed, share, probs, names, self.known, self.min_share, self.min_open_prob
        )
        label2id = self.labels.label2id
        ids = np.array([label2id[c] for c in chosen], dtype=np.int64)
        ids[total == 0] = -1
        closed_props = top_k_names(counts, self.labels, self.num_proposals)
        open_props = _top_names(probs, names, self.num_proposals)
        proposals = [open_props[i] if b == "open" else closed_props[i] for i, b in enumerate(branches)]
        self.last_branches = branches
        return MaskLabels(ids, proposals)


def _subset(masks: MaskSet, keep: Sequence[int]) -> MaskSet:
    if masks.rles is not None:
        return MaskSet.from_rles([masks.rles[i] for i in keep], masks.shape)
    return MaskSet.from_dense(masks.dense[list(keep)])  # type: ignore[index]


def _model_class_names(spec: str | Path) -> list[str]:
    """Class names of a Hugging Face model (its config's id2label), without loading weights."""
    from transformers import AutoConfig

    local = Path(str(spec)).expanduser()
    try:
        config = AutoConfig.from_pretrained(
            str(local) if local.exists() else str(spec),
            local_files_only=local.exists() or os.environ.get("HF_HUB_OFFLINE") == "1",
        )
    except (OSError, ValueError) as exc:
        raise SednaSamError(f"cannot read the classes of semantic model {spec!r}: {exc}") from None
    return [str(n) for n in config.id2label.values()]
