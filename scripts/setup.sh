#!/usr/bin/env bash
# Idempotent setup of the project's virtual environment in .venv/.
#
# Order matters: torch first (so nothing pulls a CUDA build on a CPU machine), then the
# build requirements and mmcv's runtime dependencies, then mmcv 2.1.0 compiled from source
# with its ops, then mmengine / mmdet / mmseg and mmef itself. A second run only checks.
#
# Environment knobs (installation only, never the model):
#   TORCH_SPEC   pip requirement for torch (default torch==2.13.0; on CUDA machines pick
#                the matching build, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...")
#   VENV         where the environment lives (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY="$VENV/bin/python"
STAMP="$VENV/.mmef-setup"
log() { printf '[setup] %s\n' "$*" >&2; }

# Everything that decides what gets installed; a change re-runs the install steps.
want=$( { echo "$TORCH_SPEC"; cat requirements/*.txt setup.py pyproject.toml scripts/setup.sh; } | sha256sum | cut -d' ' -f1)

if [ ! -x "$PY" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c 'import mmcv.ops, mmdet, mmseg, mmef, mmdeploy, openvino, nncf' 2>/dev/null; then
    log "environment up to date ($VENV)"
    exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)

if ! "$PY" -c 'import torch' 2>/dev/null; then
    log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_SPEC
fi

log "installing build requirements and pinned dependencies"
"${PIP[@]}" install -r requirements/build.txt -r requirements/runtime.txt -r requirements/tests.txt \
    -r requirements/openvino.txt
# without its dependency pins (protobuf<=3.20.2 clashes with onnxruntime): see the file
"${PIP[@]}" install --no-deps -r requirements/deploy.txt

if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
    # mmcv-lite / the PyPI sdist built in isolation have no ops; Mask R-CNN needs RoIAlign and NMS.
    # pip keeps the built wheel in its cache, so later environments install it in seconds.
    log "building mmcv 2.1.0 with ops from source (about 15 minutes on 2 cores the first time)"
    MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=${MAX_JOBS:-2} \
        "${PIP[@]}" install --no-build-isolation mmcv==2.1.0
fi

# compat mode puts the repository on sys.path (a .pth file) instead of setuptools' import hook:
# a regular package found on sys.path wins over a same-named folder without __init__.py, so
# Python started in the folder that contains a clone named mmef still imports the package
# (with the hook, that folder shadowed it as an empty namespace package).
log "installing mmef (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat

"$PY" -m mmef.check
echo "$want" > "$STAMP"
log "done"
