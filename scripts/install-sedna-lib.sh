#!/usr/bin/env bash
# Install Sedna's Python lib (the kubeedge/sedna repository's lib/, package `sedna`) into the
# venv of PYTHON. The one recipe for scripts/install.sh, Dockerfile.cloud and Dockerfile.edge:
#
#   scripts/install-sedna-lib.sh [--kb-server] PYTHON
#
# PyPI's package named `sedna` is an unrelated project: this never installs it. The lib goes
# in with --no-deps (its requirements.txt pins 2021 releases that do not build on Python 3.11;
# its setup.py extras pull packages the worker does not use), then the runtime set in
# requirements/sedna-lib.txt; --kb-server adds requirements/sedna-kb.txt, the knowledge-base
# server's set (pydantic<2: give it a venv of its own). Then it imports what the worker (or
# the KB server) needs and records the release in <site-packages>/sedna/SEDNA_SAM_SOURCE_TAG
# (one line, "<tag> <source>"; the lib's own version says 0.4.1 at v0.7.0).
#
# Source, the first that applies:
#   $SEDNA_LIB_SRC      a path or pip URL; SEDNA_REF names the release it is (default v0.7.0)
#   ../shared/vendor/sedna-lib-$SEDNA_REF.tar.gz   vendored snapshot next to the project (CI)
#   git+https://github.com/kubeedge/sedna.git@$SEDNA_REF#subdirectory=lib   (needs GitHub)
# Rerun: a quick no-op when the same source is recorded and the imports work.
set -euo pipefail

usage() {
  echo "usage: $0 [--kb-server] PYTHON   (PYTHON: the interpreter of the target venv)" >&2
  exit 2
}
say() { echo "[sedna-lib] $*"; }
die() {
  echo "[sedna-lib] error: $*" >&2
  exit 1
}

KB=0
if [ "${1:-}" = "--kb-server" ]; then
  KB=1
  shift
fi
[ $# -eq 1 ] || usage
PYTHON=$1
case $PYTHON in
  -*) usage ;;
  /*) ;;
  */*) PYTHON="$PWD/$PYTHON" ;;  # relative to the caller's directory
esac
"$PYTHON" -c "import sys" 2>/dev/null || die "$PYTHON is not a working Python interpreter"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF=${SEDNA_REF:-v0.7.0}
GIT_URL="git+https://github.com/kubeedge/sedna.git@${REF}#subdirectory=lib"
VENDORED="$ROOT/../shared/vendor/sedna-lib-${REF}.tar.gz"
REQS=(-r "$ROOT/requirements/sedna-lib.txt")
[ "$KB" = 1 ] && REQS+=(-r "$ROOT/requirements/sedna-kb.txt")
TAG_FILE=SEDNA_SAM_SOURCE_TAG

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
if [ -n "${SEDNA_LIB_SRC:-}" ]; then
  SRC=$SEDNA_LIB_SRC
  if [ -f "$SRC" ]; then
    SOURCE_ID="sha256:$(sha256_of "$SRC")"
  elif [ -d "$SRC" ]; then
    SRC=$(cd "$SRC" && pwd)
    SOURCE_ID="path:$SRC"
  elif [ "$SRC" = "$GIT_URL" ]; then
    SOURCE_ID="git:kubeedge/sedna@$REF"
  else
    SOURCE_ID=$SRC
  fi
  WHERE="SEDNA_LIB_SRC=$SRC"
elif [ -f "$VENDORED" ]; then
  SRC=$(cd "$(dirname "$VENDORED")" && pwd)/$(basename "$VENDORED")
  SOURCE_ID="sha256:$(sha256_of "$SRC")"
  WHERE="the vendored snapshot $SRC"
else
  SRC=$GIT_URL
  SOURCE_ID="git:kubeedge/sedna@$REF"
  WHERE="$GIT_URL"
fi
WANT="$REF $SOURCE_ID"

# Python runs in an empty directory, so that nothing in the caller's directory shadows `sedna`.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
py() { (cd "$WORK" && "$PYTHON" "$@"); }
# pip install, quiet. The lib's metadata keeps its 2021 pins, which pip then reports as
# conflicts on every install; those lines are dropped (the lib is installed without them on
# purpose), any other conflict is shown with pip's header.
pip_q() {
  local log rc=0 pins='^sedna [^ ]+ requires ' conflicts='^[^ ]+ [^ ]+ requires '
  log=$(mktemp -p "$WORK")
  py -m pip install -q --disable-pip-version-check --no-input "$@" >"$log" 2>&1 || rc=$?
  if grep -E "$conflicts" "$log" | grep -qvE "$pins"; then
    grep -vE "$pins" "$log" || true
  else
    grep -vE "$pins|^ERROR: pip's dependency resolver does not currently" "$log" || true
  fi
  return "$rc"
}

# The installed `sedna` package's directory, found without importing it; empty when absent.
PKG_DIR_PY='
import importlib.util
spec = importlib.util.find_spec("sedna")
print((list(spec.submodule_search_locations or []) or [""])[0] if spec else "")
'
# Import check (Python source: its backquotes are Markdown, not shell): exit 3 when `sedna` is missing or not kubeedge's lib, 4 when an import fails.
# shellcheck disable=SC2016
VERIFY_PY='
import importlib.util, os, sys
spec = importlib.util.find_spec("sedna")
if spec is None:
    print("no package named `sedna` is installed"); sys.exit(3)
dirs = list(spec.submodule_search_locations or [])
if not any(os.path.isfile(os.path.join(d, "core", "lifelong_learning", "__init__.py")) for d in dirs):
    print(f"the `sedna` at {spec.origin} is not KubeEdge Sedna (no sedna.core.lifelong_learning): "
          "the PyPI package named `sedna` is an unrelated project; pip uninstall sedna")
    sys.exit(3)
try:
    if sys.argv[1] == "kb":
        from sedna.service.server.knowledgeBase.server import KBServer  # noqa: F401
    else:
        from sedna.core.lifelong_learning import LifelongLearning  # noqa: F401
except Exception:
    import traceback
    traceback.print_exc(limit=-3); sys.exit(4)
'
WHAT=worker
IMPORT="from sedna.core.lifelong_learning import LifelongLearning"
if [ "$KB" = 1 ]; then
  WHAT=kb
  IMPORT="from sedna.service.server.knowledgeBase.server import KBServer"
fi
verify() { py -c "$VERIFY_PY" "$WHAT"; }

install_requirements() {
  pip_q "${REQS[@]}" || die "could not install the lib's runtime requirements (${REQS[*]}) into $PYTHON"
}

PKG_DIR=$(py -c "$PKG_DIR_PY")
RECORDED=""
if [ -n "$PKG_DIR" ] && [ -f "$PKG_DIR/$TAG_FILE" ]; then
  RECORDED=$(head -n1 "$PKG_DIR/$TAG_FILE")
fi
if [ "$(echo "$RECORDED" | cut -d' ' -f1-2)" = "$WANT" ]; then
  install_requirements  # a no-op when they are satisfied; follows edits of the files
  if verify >/dev/null 2>&1; then
    say "already installed: $RECORDED ($IMPORT works)"
    exit 0
  fi
  say "recorded $RECORDED but the import fails: reinstalling"
fi

say "installing Sedna's lib $REF from $WHERE"
[ -n "$PKG_DIR" ] && rm -f "$PKG_DIR/$TAG_FILE"
if ! pip_q --no-deps --force-reinstall "$SRC"; then
  if [ "$SRC" = "$GIT_URL" ]; then
    die "could not install Sedna's lib from $GIT_URL: this needs access to GitHub (and git). Without it, set SEDNA_LIB_SRC to a copy of the kubeedge/sedna repository's lib/ at $REF (a directory, an archive of it, or a pip URL)."
  fi
  die "could not install Sedna's lib from $WHERE"
fi
install_requirements

set +e
out=$(verify 2>&1)
rc=$?
set -e
if [ "$rc" != 0 ]; then
  [ "$rc" = 3 ] && die "$out"
  die "Sedna's lib is installed but \`$IMPORT\` fails in $PYTHON:
$out"
fi

PKG_DIR=$(py -c "$PKG_DIR_PY")
COMMIT=$(py -c '
import importlib.metadata, json
try:
    info = json.loads(importlib.metadata.distribution("sedna").read_text("direct_url.json") or "{}")
except Exception:
    info = {}
print(info.get("vcs_info", {}).get("commit_id", ""))
')
LINE="$WANT${COMMIT:+ commit:$COMMIT}"
echo "$LINE" >"$PKG_DIR/$TAG_FILE"
say "installed $LINE into $PKG_DIR ($IMPORT works)"
