#!/usr/bin/env bash
# Install sedna-sam and everything its tests and the local pipeline need, from scratch:
#   .venv/     the product (torch + torchvision as one matching pair, then this package)
#   .venv-ls/  Label Studio in its own venv (it pins Django and many packages)
#   .venv/     also Sedna's lib v0.7.0 (scripts/install-sedna-lib.sh; SEDNA_SAM_SKIP_SEDNA_LIB=1 skips)
#   .venv-kb/  Sedna's knowledge-base server in its own venv (it needs pydantic<2)
#   chromium   Debian's browser, for the one browser test (root only; skipped otherwise)
# Safe to rerun: finished steps are quick no-ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
# Run a command, hiding pip's noise about missing local wheel folders; keep its exit status.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  grep -vE "^WARNING: Location|^\s*$" "$log" || true
  rm -f "$log"
  return "$rc"
}

TORCH_SPEC=${SEDNA_SAM_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
LS_SPEC=${SEDNA_SAM_LS_SPEC:-"label-studio==1.23.2"}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "[install] torch pair: $TORCH_SPEC"
# shellcheck disable=SC2086
quiet .venv/bin/pip install -q $TORCH_SPEC
echo "[install] sedna-sam[all,dev]"
quiet .venv/bin/pip install -q -e ".[all,dev]"

# Sedna's lib (kubeedge/sedna lib/, never PyPI's unrelated `sedna`) by the images' recipe, and
# its knowledge-base server in its own venv (it needs pydantic<2).
if [ -z "${SEDNA_SAM_SKIP_SEDNA_LIB:-}" ]; then
  echo "[install] Sedna's lib in .venv"
  quiet bash scripts/install-sedna-lib.sh .venv/bin/python
  [ -x .venv-kb/bin/python ] || "$PY" -m venv .venv-kb
  [ -f .venv-kb/.gitignore ] || echo "*" >.venv-kb/.gitignore  # as venv does from Python 3.13
  echo "[install] Sedna's knowledge-base server in .venv-kb"
  quiet bash scripts/install-sedna-lib.sh --kb-server .venv-kb/bin/python
else
  echo "[install] SEDNA_SAM_SKIP_SEDNA_LIB: no Sedna lib in .venv (workers run standalone, without" \
    "Sedna's LifelongLearning path) and no .venv-kb (no local knowledge-base server);" \
    "tests/test_sedna_install.py is skipped"
fi

if [ -z "${SEDNA_SAM_SKIP_LS:-}" ]; then
  [ -x .venv-ls/bin/python ] || "$PY" -m venv .venv-ls
  echo "[install] $LS_SPEC in .venv-ls"
  # shellcheck disable=SC2086
  quiet .venv-ls/bin/pip install -q $LS_SPEC
fi

# Debian packages the tests use: install when missing (root with apt), else say what breaks.
apt_install_if_missing() {  # COMMAND PACKAGE WHAT-NEEDS-IT
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] $2 (Debian package)"
    quiet apt-get update -q
    DEBIAN_FRONTEND=noninteractive quiet apt-get install -y -q --no-install-recommends "$2"
  else
    echo "[install] $1 not installed and not root: $3; install Debian's $2"
  fi
}
# chromium: the one browser test; kubectl renders the kustomize overlays offline (no cluster).
[ -n "${SEDNA_SAM_SKIP_BROWSER:-}" ] || apt_install_if_missing chromium chromium "the browser test will fail"
[ -n "${SEDNA_SAM_SKIP_KUBECTL:-}" ] || apt_install_if_missing kubectl kubectl "the manifest tests will be skipped"
# postgresql: the queue tests start a throwaway server from /usr/lib/postgresql/<version>/bin
# (not on PATH; pg_ctlcluster, from the same package, is).
[ -n "${SEDNA_SAM_SKIP_POSTGRES:-}" ] || apt_install_if_missing pg_ctlcluster postgresql \
  "the PostgreSQL queue tests will be skipped"
echo "[install] done: activate with 'source .venv/bin/activate'"
