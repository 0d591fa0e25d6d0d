#!/usr/bin/env bash
# One set-up step for this project (README.md, "Set-up"): creates .venv/ and installs torch,
# Detectron2, the other dependencies and this project. Idempotent: quick when already done.
#   bash tools/setup_env.sh          (or: make setup)
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
#   D2_GIT_URL (official Detectron2 repository), D2_GIT_TIMEOUT (seconds, default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.setup-done"
D2_GIT_URL=${D2_GIT_URL:-https://github.com/facebookresearch/detectron2.git}
D2_GIT_TIMEOUT=${D2_GIT_TIMEOUT:-15}
PB1_VERSION=0.6
PB1_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
# Pins that keep the v0.6 fallback working (pkg_resources; PIL.Image.LINEAR; np.bool in the VOC
# evaluator) and that never let a dependency pull another torch.
CONSTRAINTS="$ROOT/tools/constraints.txt"

log() { printf '[setup] %s\n' "$*"; }

if [ -f "$STAMP" ] && [ "$STAMP" -nt tools/setup_env.sh ] && [ "$STAMP" -nt pyproject.toml ] \
   && "$PY" -c "import torch, detectron2, pseudo_iou, autoassign" 2>/dev/null; then
  log "already set up ($(cat "$STAMP")); delete $STAMP to redo"
  exit 0
fi

[ -x "$PY" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" -q "torch==2.14.1" "torchvision==0.29.1"
fi
"${PIP[@]}" -q "setuptools<81" wheel "numpy<1.24" "Pillow<10"

route=""
if "$PY" -c "import detectron2" 2>/dev/null; then
  route="existing ($("$PY" -c 'import detectron2; print(detectron2.__version__)'))"
elif timeout "$D2_GIT_TIMEOUT" git ls-remote --exit-code "$D2_GIT_URL" HEAD >/dev/null 2>&1; then
  log "official Detectron2 is reachable: building it from $D2_GIT_URL (compiled ops)"
  "${PIP[@]}" --no-build-isolation "git+$D2_GIT_URL"
  route="official Detectron2 from git (main, compiled ops)"
else
  log "official Detectron2 is not reachable; falling back to pb1-detectron2==$PB1_VERSION (v0.6) without compiled ops"
  BUILD=$(mktemp -d)
  "$PY" tools/fetch_sdist.py pb1-detectron2 "$PB1_VERSION" "$PB1_SHA256" "$BUILD/pb1.tar.gz"
  tar -xzf "$BUILD/pb1.tar.gz" -C "$BUILD"
  SRC="$BUILD/pb1-detectron2-$PB1_VERSION"
  "$PY" tools/patch_pb1_setup.py "$SRC/setup.py"
  cp tools/detectron2_fallback/_C.py "$SRC/detectron2/_C.py"
  "${PIP[@]}" -q --no-build-isolation "$SRC"
  rm -rf "$BUILD"
  route="pb1-detectron2==$PB1_VERSION (Detectron2 v0.6 Python code, no compiled ops)"
fi
log "Detectron2 route: $route"

"${PIP[@]}" -q fvcore pycocotools opencv-python-headless tensorboard pytest matplotlib
"${PIP[@]}" -q --no-build-isolation --no-deps -e .
"$PY" -c "import torch, detectron2, pseudo_iou, autoassign; print('torch', torch.__version__, '| detectron2', detectron2.__version__)"
echo "$route" > "$STAMP"
log "done"
