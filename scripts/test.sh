#!/usr/bin/env bash
# The test suite, as CI runs it: installs what is missing (scripts/install.sh), links the SentEval data of an
# offline mirror when one is given or found beside the checkout, then `pytest -m "not slow"`.
#
#   bash scripts/test.sh [pytest arguments...]
#   CLUSTERNS_DATA_MIRROR=DIR bash scripts/test.sh     # DIR: the data mirror (default ../shared/data, if present)
# Without a mirror the tests that need the real data are skipped (the fidelity gates fail instead when
# CLUSTERNS_DATA_MIRROR is set but missing: see the README's Tests section).
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
bash scripts/install.sh
mirror="${CLUSTERNS_DATA_MIRROR:-../shared/data}"
if [ -d "$mirror/senteval" ]; then
  export CLUSTERNS_DATA_MIRROR="$(cd "$mirror" && pwd)"  # absolute: some tests run in other folders
  bash SentEval/data/downstream/download_dataset.sh --from "$mirror/senteval" --link
fi
python -m pytest -q -m "not slow" -p no:cacheprovider "$@"
