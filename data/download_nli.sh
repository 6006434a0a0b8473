#!/usr/bin/env bash
# Fetch SimCSE's supervised training set (nli_for_simcse.csv: sent0,sent1,hard_neg) into data/.
#   bash data/download_nli.sh               # online
#   bash data/download_nli.sh --from FILE   # offline: copy a local copy instead
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src=""
out="$here/nli_for_simcse.csv"
url="https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main/nli_for_simcse.csv"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) src="${2:?--from needs a file}"; shift 2 ;;
    --output) out="${2:?--output needs a file}"; shift 2 ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "download_nli.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [ -n "$src" ]; then
  [ -f "$src" ] || { echo "download_nli.sh: '$src' is not a file" >&2; exit 1; }
  cp "$src" "$out.tmp" && mv "$out.tmp" "$out"
else
  curl -fL --retry 3 -o "$out.tmp" "$url" || { echo "download_nli.sh: download failed; offline? pass --from FILE" >&2; rm -f "$out.tmp"; exit 1; }
  mv "$out.tmp" "$out"
fi
echo "nli: $out ($(wc -l < "$out") lines)"
