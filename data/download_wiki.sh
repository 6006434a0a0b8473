#!/usr/bin/env bash
# Fetch the unsupervised training corpus (1M Wikipedia sentences, as SimCSE) into data/.
#
#   bash data/download_wiki.sh                      # online: wiki1m_for_simcse.txt from the SimCSE dataset repo
#   bash data/download_wiki.sh --from FILE_OR_DIR   # offline: copy a local corpus instead
#       FILE_OR_DIR is a one-sentence-a-line file, or a folder holding wiki1m_for_simcse.txt
#       (or a corpus/en_sentences.txt, the layout of the offline data mirror).
#   --output FILE   where to write (default: data/wiki1m_for_simcse.txt)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src=""
out="$here/wiki1m_for_simcse.txt"
url="https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main/wiki1m_for_simcse.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) src="${2:?--from needs a file or folder}"; shift 2 ;;
    --output) out="${2:?--output needs a file}"; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "download_wiki.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$out")"
if [ -n "$src" ]; then
  if [ -d "$src" ]; then
    for candidate in "$src/wiki1m_for_simcse.txt" "$src/corpus/en_sentences.txt" "$src/en_sentences.txt"; do
      if [ -f "$candidate" ]; then src="$candidate"; break; fi
    done
  fi
  if [ ! -f "$src" ]; then
    echo "download_wiki.sh: no corpus found at '$src' (expected a file, or a folder with wiki1m_for_simcse.txt or corpus/en_sentences.txt)" >&2
    exit 1
  fi
  cp "$src" "$out.tmp" && mv "$out.tmp" "$out"
else
  curl -fL --retry 3 -o "$out.tmp" "$url" || { echo "download_wiki.sh: download failed; offline? pass --from FILE_OR_DIR" >&2; rm -f "$out.tmp"; exit 1; }
  mv "$out.tmp" "$out"
fi
lines=$(wc -l < "$out")
if [ "$lines" -eq 0 ]; then echo "download_wiki.sh: $out is empty" >&2; exit 1; fi
echo "corpus: $out ($lines lines)"
