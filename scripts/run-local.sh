#!/usr/bin/env bash
# The main job on one machine, on the embedded defaults:
#   install (first run only) -> start a local Label Studio -> pre-annotate the images
#   (SAM + semantic voting) -> polygon tasks -> push them to Label Studio -> TrainIds.
# Then a person corrects the tasks in the browser and `sedna-sam ls pull` brings the labels back.
#
#   bash scripts/run-local.sh [IMAGE_DIR]          (default: examples/dataset/raw_data)
#
# Real models: SAM_CKPT=models/sam_vit_h_4b8939.pth SEMANTIC_MODEL=<Segformer dir or hub id>.
# Without them it runs with tiny random-weight models (meaningless masks, plumbing only) and says so.
# Everything lives under $SEDNA_SAM_LOCAL_DIR (default ./local); rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-examples/dataset/raw_data}
LOCAL=${SEDNA_SAM_LOCAL_DIR:-$PWD/local}
PORT=${SEDNA_SAM_LS_PORT:-8080}
PROJECT=${SEDNA_SAM_PROJECT:-sedna-sam}

SEDNA_SAM_SKIP_BROWSER=${SEDNA_SAM_SKIP_BROWSER:-1} bash scripts/install.sh
# shellcheck disable=SC1091
source .venv/bin/activate
mkdir -p "$LOCAL"
LOCAL=$(cd "$LOCAL" && pwd)

if [ -f "$LOCAL/label-studio/label-studio.pid" ] && kill -0 "$(cat "$LOCAL/label-studio/label-studio.pid")" 2>/dev/null; then
  echo "[run-local] Label Studio already running (pid $(cat "$LOCAL/label-studio/label-studio.pid"))"
else
  sedna-sam ls up --data-dir "$LOCAL/label-studio" --document-root "$LOCAL" --port "$PORT"
fi
export LABEL_STUDIO_URL="http://127.0.0.1:$PORT"
LABEL_STUDIO_API_KEY="$(cat "$LOCAL/label-studio/api-token")"
export LABEL_STUDIO_API_KEY LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$LOCAL"

if [ -n "${SAM_CKPT:-}" ] && [ -n "${SEMANTIC_MODEL:-}" ]; then
  MODELS=(--ckpt-path "$SAM_CKPT" --semantic-model "$SEMANTIC_MODEL")
else
  MODELS=(--tiny-random-models)
fi
sedna-sam demo --out "$LOCAL/dataset" --images "$IMAGES" "${MODELS[@]}" \
  --label-studio-url "$LABEL_STUDIO_URL" --project "$PROJECT"

cat <<MSG

[run-local] done. Open $LABEL_STUDIO_URL and log in as admin@example.com with the password in
            $LOCAL/label-studio/password, correct the tasks of project '$PROJECT', then:
    source .venv/bin/activate
    export LABEL_STUDIO_URL=$LABEL_STUDIO_URL LABEL_STUDIO_API_KEY="\$(cat $LOCAL/label-studio/api-token)"
    sedna-sam ls pull --dataset-dir $LOCAL/dataset --project $PROJECT    # -> train_ids/*_TrainIds.png
    sedna-sam ls down --data-dir $LOCAL/label-studio                      # stop Label Studio
MSG
