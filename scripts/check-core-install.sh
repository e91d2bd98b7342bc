#!/usr/bin/env bash
# A plain `pip install sedna-sam` (no extras: no torch, no Label Studio client) into a fresh
# venv, from a wheel built here (what users get: package data included, no source tree), then
# the converters end to end: SSA -> Label Studio tasks -> TrainIds, and SSA -> TrainIds.
# CI runs it (.ci/run); run it by hand with `bash scripts/check-core-install.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip wheel -q --no-deps -w "$work/wheel" "$repo"
"$py" -m pip install -q "$work"/wheel/sedna_sam-*.whl
cd "$work"  # not the source tree: the installed package only
for heavy in torch transformers httpx label_studio_sdk; do
  if "$py" -c "import $heavy" 2>/dev/null; then
    echo "[core] $heavy is installed by the core package: it must stay in an extra" >&2
    exit 1
  fi
done
"$py" - <<'PY'
# The label sets and the labeling template come with the wheel (package data), as in a checkout.
from sedna_sam.labels import cityscapes, config_file, labeling_config_xml, load_labels

assert load_labels("cityscapes").source == "sedna_sam.config/cityscapes_id2label.json"
assert len(load_labels("ade20k")) == 150
assert config_file("labeling_interface_template.xml").read_text() == labeling_config_xml(cityscapes())
print("[core] label sets and the labeling template load from the installed package data")
PY
"$py" - <<'PY'
# One synthetic street scene and its SSA file, written with the installed package.
from pathlib import Path

from sedna_sam.formats.ssa import ssa_document
from sedna_sam.images import write_png
from sedna_sam.labels import cityscapes
from sedna_sam.storage import atomic_write_json
from sedna_sam.synthetic import make_street_scene, render_scene

labels = cityscapes()
for i in range(2):
    scene = make_street_scene(128, 256, seed=i)
    write_png(Path(f"D/raw_data/scene_{i}.png"), render_scene(scene, labels, seed=i))
    atomic_write_json(Path(f"D/ssa_output/scene_{i}_semantic.json"), ssa_document(scene.astype("uint16"), []))
PY
sedna=$work/venv/bin/sedna-sam
"$sedna" ssa-to-ls --dataset-dir D --kind annotations --tolerance 0
"$sedna" ls-to-trainids --dataset-dir D --ls-json-name tasks.json
mkdir -p D2 && cp -r D/raw_data D/ssa_output D2/ && "$sedna" ssa-to-trainids --dataset-dir D2
"$py" - <<'PY'
# Both paths give the scene's labels back (polygons at tolerance 0; tiny regions dropped).
from pathlib import Path

import numpy as np
from PIL import Image

from sedna_sam.synthetic import make_street_scene

for dataset, how in (("D", "via Label Studio tasks"), ("D2", "direct")):
    for i in range(2):
        got = np.asarray(Image.open(f"{dataset}/train_ids/scene_{i}_TrainIds.png"))
        want = make_street_scene(128, 256, seed=i)
        agree = float((got == want).mean())
        assert agree > 0.99, f"{dataset}/scene_{i}: TrainIds agree with the scene on {agree:.4f} of pixels"
        print(f"[core] scene_{i} {how}: TrainIds == scene on {agree:.4%} of pixels")
PY
echo "[core] the core install converts: ssa-to-ls, ls-to-trainids, ssa-to-trainids"
