"""Open-vocabulary labels: a tiny CLIP saved and loaded like a real checkpoint.

A random-weight CLIP says nothing about images, so the labelling tests first teach a tiny
CLIP four colour words ("red thing", ...) for a few seconds, save it with
``save_pretrained`` and load it back through :func:`load_clip`. That model is real enough
to check the plumbing end to end: label names from a labels JSON, crops around masks,
and the closed-set/open-vocabulary combination.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sedna_sam.annotate.clip import load_clip, mask_crops
from sedna_sam.annotate.openvocab import combine_closed_open
from sedna_sam.annotate.tiny_clip import build_tiny_clip
from sedna_sam.errors import SednaSamError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _teach_colours(clip, steps: int = 40, seed: int = 0) -> None:
    """Contrastive steps on solid-colour squares of random size/position vs colour prompts."""
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    names = list(COLOURS)
    tokens = clip.tokenizer([f"a photo of a {n} thing." for n in names], padding=True, return_tensors="pt")
    opt = torch.optim.Adam(clip.model.parameters(), lr=3e-3)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    s = clip.image_size
    clip.model.train()
    for _ in range(steps):
        k = rng.integers(0, len(names), 32)
        imgs = np.full((32, s, s, 3), 127, np.uint8)
        for i, kk in enumerate(k):
            side = int(rng.integers(s // 4, s + 1))
            oy, ox = rng.integers(0, s - side + 1, 2)
            colour = np.array(COLOURS[names[kk]]) + rng.integers(-25, 25, 3)
            imgs[i, oy : oy + side, ox : ox + side] = np.clip(colour, 0, 255)
        x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - mean) / std
        img_f = clip.model.get_image_features(pixel_values=x)
        txt_f = clip.model.get_text_features(**tokens)
        img_f = torch.nn.functional.normalize(getattr(img_f, "pooler_output", img_f), dim=-1)
        txt_f = torch.nn.functional.normalize(getattr(txt_f, "pooler_output", txt_f), dim=-1)
        loss = torch.nn.functional.cross_entropy(
            clip.model.logit_scale.exp() * img_f @ txt_f.T, torch.from_numpy(k)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    clip.model.eval()


@pytest.fixture(scope="module")
def colour_clip_dir(tmp_path_factory):
    """A tiny CLIP that knows four colour words, saved like a downloaded checkpoint."""
    out = build_tiny_clip(
        tmp_path_factory.mktemp("clip") / "colour-clip", words=[f"{c} thing" for c in COLOURS]
    )
    clip = load_clip(out, device="cpu")
    _teach_colours(clip)
    clip.model.save_pretrained(out)
    return out


def blobs_image(h: int = 96, w: int = 160) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A grey image with a red, a green and a blue rectangle -> (image, masks (3, H, W), colours)."""
    image = np.full((h, w, 3), 110, np.uint8)
    masks = np.zeros((3, h, w), bool)
    boxes = {"red": (10, 10, 50, 60), "green": (20, 70, 70, 110), "blue": (40, 115, 90, 155)}
    for i, (colour, (y0, x0, y1, x1)) in enumerate(boxes.items()):
        image[y0:y1, x0:x1] = COLOURS[colour]
        masks[i, y0:y1, x0:x1] = True
    return image, masks, list(boxes)


def test_tiny_clip_is_a_real_checkpoint(tmp_path):
    out = build_tiny_clip(tmp_path / "tiny-clip")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    clip = load_clip(str(out), device="cpu")
    assert clip.source == str(out.resolve())
    # Words outside the learned vocabulary still tokenize (byte-level BPE), never to <unk>.
    ids = clip.tokenizer("a photo of a scooter.")["input_ids"]
    assert clip.tokenizer.unk_token_id not in ids[1:-1]
    image, masks, _ = blobs_image()
    crops = mask_crops(image, masks, clip.image_size)
    probs = clip.class_probabilities(crops, ["road", "scooter", "road works"])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_load_clip_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SednaSamError, match="no config.json"):
        load_clip(tmp_path / "empty", device="cpu")
    with pytest.raises(SednaSamError, match="huggingface-cli download"):
        load_clip("openai/clip-vit-base-patch32-not-cached", device="cpu")


def test_mask_crops_keep_the_object_and_grey_out_the_rest():
    image, masks, _ = blobs_image()
    image[masks[0]] = (220, 30, 30)
    crops = mask_crops(image, masks, 32, context=0.25)
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == np.uint8
    centre = crops[0, 12:20, 12:20].reshape(-1, 3)
    assert (centre == (220, 30, 30)).all()
    assert (crops[0, 0, 0] == 127).all()  # context margin outside the mask is grey
    empty = mask_crops(image, np.zeros((1, 96, 160), bool), 32)
    assert (empty == 127).all()


def test_combine_rules():
    names = ["car", "road", "scooter"]
    probs = np.array(
        [
            [0.1, 0.8, 0.1],  # closed sure (car), CLIP disagrees with a known class -> closed stands
            [0.2, 0.7, 0.1],  # closed unsure -> CLIP's road
            [0.1, 0.1, 0.8],  # CLIP confident about a class the closed set does not know -> scooter
            [0.1, 0.5, 0.4],  # closed voted a class not in the label list -> CLIP
        ]
    )
    labels, branch = combine_closed_open(
        ["car", "car", "car", "wall"], np.array([0.9, 0.3, 0.95, 0.9]), probs, names, {"car", "road", "wall"}
    )
    assert labels == ["car", "road", "scooter", "road"]
    assert branch == ["closed", "open", "open", "open"]


def test_colour_clip_labels_follow_the_labels_config(colour_clip_dir, tmp_path):
    """Adding a class to the labels JSON is all it takes for it to be used."""
    from sedna_sam.labels import load_labels

    image, masks, truth = blobs_image()
    clip = load_clip(colour_clip_dir, device="cpu")
    crops = mask_crops(image, masks, clip.image_size)

    two = tmp_path / "two.json"
    two.write_text(json.dumps({"0": "red thing", "1": "green thing"}))
    labels = load_labels(two)
    probs = clip.class_probabilities(crops, labels.names)
    got = [labels.names[k] for k in probs.argmax(1)]
    assert got[:2] == ["red thing", "green thing"]
    assert got[2] in ("red thing", "green thing")  # blue has no name yet

    three = tmp_path / "three.json"
    three.write_text(json.dumps({"0": "red thing", "1": "green thing", "2": "blue thing"}))
    labels = load_labels(three)
    probs = clip.class_probabilities(crops, labels.names)
    assert [labels.names[k] for k in probs.argmax(1)] == [f"{c} thing" for c in truth]
    assert probs[2, 2] > 0.5


@pytest.fixture(scope="module")
def red_everywhere_segformer_dir(tmp_path_factory):
    """A closed-set model (tiny Segformer, 2 classes) that is sure every pixel is "red thing":
    its classifier bias is set so, a real checkpoint saved and loaded like any other."""
    import torch

    from sedna_sam.labels import LabelSet
    from sedna_sam.segformer import save_segformer, tiny_segformer

    model = tiny_segformer(LabelSet.from_names(["red thing", "green thing"]))
    with torch.no_grad():
        model.decode_head.classifier.bias[:] = torch.tensor([50.0, -50.0])
    return save_segformer(model, tmp_path_factory.mktemp("segformer") / "red", input_size=(64, 64))


def evidence_for(semantic_ids: np.ndarray, masks: np.ndarray):
    """The engine's per-image evidence: config ids + per-mask histograms (B's voting pass)."""
    from sedna_sam.annotate.labelers import SemanticEvidence
    from sedna_sam.annotate.voting import MaskSet, class_counts_and_owner

    mask_set = MaskSet.from_dense(masks)
    return mask_set, SemanticEvidence(semantic_ids, *class_counts_and_owner(semantic_ids, mask_set))


def test_segformer_plus_clip_closed_first_open_where_needed(colour_clip_dir, red_everywhere_segformer_dir):
    from sedna_sam.annotate.labelers import make_labeler
    from sedna_sam.annotate.semantic import SegformerBackend
    from sedna_sam.labels import LabelSet

    image, masks, _ = blobs_image()
    labels = LabelSet.from_names(["red thing", "green thing", "blue thing"])  # blue: new class
    semantic_ids = SegformerBackend(red_everywhere_segformer_dir, labels, device="cpu").predict(image)
    mask_set, evidence = evidence_for(semantic_ids, masks)
    options = {"clip_model": colour_clip_dir, "semantic_model": red_everywhere_segformer_dir, "device": "cpu"}
    combined = make_labeler("segformer+clip", labels, **options)
    result = combined(image, mask_set, evidence)
    # red: closed set sure and right; green: closed set sure (and wrong), CLIP's known class
    # does not overrule it; blue: a class the closed set cannot know, CLIP is confident.
    assert [labels.id2label[i] for i in result.class_ids] == ["red thing", "red thing", "blue thing"]
    assert combined.last_branches == ["closed", "closed", "open"]
    assert result.proposals[0] == ["red thing"] and result.proposals[2][0] == "blue thing"

    # A closed set that is never sure enough leaves every mask to CLIP.
    unsure = make_labeler("segformer+clip", labels, **options, min_share=1.01)
    assert [labels.id2label[i] for i in unsure(image, mask_set, evidence).class_ids] == [
        "red thing",
        "green thing",
        "blue thing",
    ]
    clip_only = make_labeler("clip", labels, clip_model=combined.open.clip)
    got = clip_only(image, mask_set, evidence)
    assert got.class_ids.tolist() == [0, 1, 2] and [p[0] for p in got.proposals] == list(labels.names)


def test_clip_labeler_in_the_engine_uses_a_new_class_from_the_labels_json(
    colour_clip_dir, red_everywhere_segformer_dir, tiny_sam_ckpt, tmp_path
):
    """Through the pre-annotation engine (tiny SAM, tiny Segformer, ``--labeler clip``): a
    labels JSON that gains "blue thing" puts it before CLIP for every mask. (Random SAM
    masks are speckles, so which mask wins which name is checked above, on set masks.)"""
    from sedna_sam.annotate.engine import AnnotateOptions, Annotator
    from sedna_sam.annotate.sam import SamParams
    from sedna_sam.labels import load_labels

    ckpt = tiny_sam_ckpt
    image, _, _ = blobs_image()
    # A random-weight SAM predicts low IoUs: keep every mask it makes.
    params = SamParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=0)
    proposed = {}
    for n in (2, 3):
        config = tmp_path / f"labels{n}.json"
        config.write_text(json.dumps({str(i): f"{c} thing" for i, c in enumerate(list(COLOURS)[:n])}))
        labels = load_labels(config)
        options = AnnotateOptions(
            ckpt_path=str(ckpt),
            semantic_model=str(red_everywhere_segformer_dir),
            labels=labels,
            labeler="clip",
            labeler_options={"clip_model": str(colour_clip_dir)},
            sam=params,
            device="cpu",
        )
        records = Annotator.from_options(options).annotate(image).document["annotations"]
        assert records and all(r["class_name"] in labels.names for r in records)
        # CLIP ranks every label name of the config for every mask, best first.
        assert all(sorted(r["class_proposals"]) == sorted(labels.names) for r in records)
        assert all(r["class_proposals"][0] == r["class_name"] for r in records)
        proposed[n] = {p for r in records for p in r["class_proposals"]}
    assert "blue thing" not in proposed[2] and "blue thing" in proposed[3]


def test_annotate_cli_with_the_clip_labeler(colour_clip_dir, tiny_sam_ckpt, tmp_path, monkeypatch):
    """`sedna-sam annotate --labeler clip --config-path labels.json`: the CLIP model comes
    from $SEDNA_SAM_CLIP_MODEL, the names from the labels JSON (a class no Segformer has)."""
    from sedna_sam.cli import main
    from sedna_sam.images import write_png
    from sedna_sam.labels import LabelSet
    from sedna_sam.segformer import build_tiny_segformer

    names = ["red thing", "green thing", "blue thing"]
    (tmp_path / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    segformer = build_tiny_segformer(
        tmp_path / "segformer", LabelSet.from_names(names[:2]), input_size=(64, 64)
    )
    write_png(tmp_path / "raw" / "blobs.png", blobs_image()[0])
    monkeypatch.setenv("SEDNA_SAM_CLIP_MODEL", str(colour_clip_dir))
    code = main(
        [
            "annotate",
            "--data-dir",
            str(tmp_path / "raw"),
            "--out-dir",
            str(tmp_path / "out"),
            "--ckpt-path",
            str(tiny_sam_ckpt),
            "--semantic-model",
            str(segformer),
            "--config-path",
            str(tmp_path / "labels.json"),
            "--labeler",
            "clip",
            "--device",
            "cpu",
            "--points-per-side",
            "2",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
            "--crop-n-layers",
            "0",
            "--no-progress",
        ]  # fmt: skip
    )
    assert code == 0
    doc = json.loads((tmp_path / "out" / "blobs_semantic.json").read_text())
    assert doc["annotations"]
    for record in doc["annotations"]:
        assert sorted(record["class_proposals"]) == sorted(names)  # CLIP ranked every name
        assert record["class_name"] == record["class_proposals"][0]
