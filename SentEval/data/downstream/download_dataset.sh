#!/usr/bin/env bash
# Fetch the SentEval evaluation data (STS12-16, STS-B, SICK, transfer tasks) into this folder
# and verify it: every expected file present, labelled pair counts as in the releases.
#
#   bash download_dataset.sh                      # online: SimCSE's senteval.tar (HF datasets)
#   bash download_dataset.sh --from DIR [--link]  # copy (or symlink) a local mirror in the same layout
#   bash download_dataset.sh --korsts             # also fetch KorSTS (kakaobrain/KorNLUDatasets)
#   bash download_dataset.sh --korsts-from DIR    # KorSTS from a local folder with sts-{train,dev,test}.tsv
#   bash download_dataset.sh --verify-only        # only check what is there
# Options: --dest DIR (default: this script's folder), --sts-only (verify STS/SICK only).
set -euo pipefail

SENTEVAL_URL="https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main/senteval.tar"
KORSTS_URL="https://raw.githubusercontent.com/kakaobrain/KorNLUDatasets/master/KorSTS"

DEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FROM="" LINK=0 KORSTS=0 KORSTS_FROM="" VERIFY_ONLY=0 STS_ONLY=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "download_dataset.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) [[ $# -ge 2 ]] || die "--from needs a folder"; FROM="$2"; shift 2 ;;
    --link) LINK=1; shift ;;
    --korsts) KORSTS=1; shift ;;
    --korsts-from|--korsts_from) [[ $# -ge 2 ]] || die "--korsts-from needs a folder"; KORSTS_FROM="$2"; KORSTS=1; shift 2 ;;
    --dest) [[ $# -ge 2 ]] || die "--dest needs a folder"; DEST="$2"; shift 2 ;;
    --verify-only) VERIFY_ONLY=1; shift ;;
    --sts-only) STS_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

# Place one top-level entry of a mirror into DEST (copy, or symlink with --link).
place() {
  local src="$1" name
  name="$(basename "$src")"
  if [[ -L "$DEST/$name" ]]; then rm -f "$DEST/$name"; fi
  if [[ $LINK -eq 1 ]]; then
    [[ -e "$DEST/$name" ]] && die "$DEST/$name exists and is not a symlink; remove it or drop --link"
    ln -s "$(cd "$(dirname "$src")" && pwd)/$name" "$DEST/$name"
  else
    cp -R "$src" "$DEST/"
  fi
}

if [[ $VERIFY_ONLY -eq 0 ]]; then
  if [[ -n "$FROM" ]]; then
    [[ -d "$FROM" ]] || die "--from: no such folder: $FROM"
    # accept both a mirror of downstream/ and a folder that holds downstream/
    [[ -d "$FROM/downstream" && ! -d "$FROM/STS" ]] && FROM="$FROM/downstream"
    [[ -d "$FROM/STS" ]] || die "--from $FROM does not look like a SentEval downstream folder (no STS/ inside)"
    echo "Placing the SentEval mirror $FROM into $DEST ($([[ $LINK -eq 1 ]] && echo symlinks || echo copy))"
    for entry in "$FROM"/*; do
      case "$(basename "$entry")" in
        download_dataset.sh|KorSTS) continue ;;
      esac
      [[ -d "$entry" ]] && place "$entry"
    done
  else
    command -v wget >/dev/null 2>&1 || command -v curl >/dev/null 2>&1 || die "need wget or curl"
    echo "Downloading $SENTEVAL_URL"
    if command -v wget >/dev/null 2>&1; then wget -O "$DEST/senteval.tar" "$SENTEVAL_URL"
    else curl -fL -o "$DEST/senteval.tar" "$SENTEVAL_URL"; fi
    tar xf "$DEST/senteval.tar" -C "$DEST"
    rm -f "$DEST/senteval.tar"
  fi
  if [[ $KORSTS -eq 1 ]]; then
    mkdir -p "$DEST/KorSTS"
    for f in sts-train.tsv sts-dev.tsv sts-test.tsv; do
      if [[ -n "$KORSTS_FROM" ]]; then
        [[ -f "$KORSTS_FROM/$f" ]] || die "--korsts-from: missing $KORSTS_FROM/$f"
        if [[ $LINK -eq 1 ]]; then ln -sfn "$(cd "$KORSTS_FROM" && pwd)/$f" "$DEST/KorSTS/$f"
        else cp "$KORSTS_FROM/$f" "$DEST/KorSTS/$f"; fi
      elif command -v wget >/dev/null 2>&1; then wget -O "$DEST/KorSTS/$f" "$KORSTS_URL/$f"
      else curl -fL -o "$DEST/KorSTS/$f" "$KORSTS_URL/$f"; fi
    done
  fi
fi

# ---- verification ---------------------------------------------------------------------------
problems=()
nlines() { awk 'END{print NR}' "$1"; }                      # counts a last line without newline too
nlabelled() { awk '{sub(/\r$/, "")} length($0) > 0' "$1" | wc -l | tr -d ' '; }  # non-empty gold lines

need_file() { [[ -f "$DEST/$1" ]] || { problems+=("missing file: $1"); return 1; }; }
expect_lines() {  # path expected [header lines]
  local path="$1" want="$2" header="${3:-0}" got
  need_file "$path" || return 0
  got=$(( $(nlines "$DEST/$path") - header ))
  [[ "$got" -eq "$want" ]] || problems+=("$path: $got rows, expected $want")
}

declare -A STS_SUBSETS=(
  [STS12]="MSRpar MSRvid SMTeuroparl surprise.OnWN surprise.SMTnews"
  [STS13]="FNWN headlines OnWN"
  [STS14]="deft-forum deft-news headlines images OnWN tweet-news"
  [STS15]="answers-forums answers-students belief headlines images"
  [STS16]="answer-answer headlines plagiarism postediting question-question"
)
declare -A STS_PAIRS=([STS12]=3108 [STS13]=1500 [STS14]=3750 [STS15]=3000 [STS16]=1186)
for year in STS12 STS13 STS14 STS15 STS16; do
  dir="STS/$year-en-test"
  total=0 complete=1
  for s in ${STS_SUBSETS[$year]}; do
    need_file "$dir/STS.input.$s.txt" || complete=0
    need_file "$dir/STS.gs.$s.txt" || { complete=0; continue; }
    if [[ -f "$DEST/$dir/STS.input.$s.txt" ]]; then
      a=$(nlines "$DEST/$dir/STS.input.$s.txt"); b=$(nlines "$DEST/$dir/STS.gs.$s.txt")
      [[ "$a" -eq "$b" ]] || problems+=("$dir: STS.input.$s.txt has $a lines but STS.gs.$s.txt has $b")
    fi
    total=$(( total + $(nlabelled "$DEST/$dir/STS.gs.$s.txt") ))
  done
  [[ $complete -eq 0 || $total -eq ${STS_PAIRS[$year]} ]] || problems+=("$year: $total labelled pairs, expected ${STS_PAIRS[$year]}")
done
expect_lines STS/STSBenchmark/sts-train.csv 5749
expect_lines STS/STSBenchmark/sts-dev.csv 1500
expect_lines STS/STSBenchmark/sts-test.csv 1379
expect_lines SICK/SICK_train.txt 4500 1
expect_lines SICK/SICK_trial.txt 500 1
expect_lines SICK/SICK_test_annotated.txt 4927 1
if [[ $STS_ONLY -eq 0 ]]; then
  expect_lines MR/rt-polarity.pos 5331;  expect_lines MR/rt-polarity.neg 5331
  expect_lines CR/custrev.pos 2407;      expect_lines CR/custrev.neg 1368
  expect_lines SUBJ/subj.subjective 5000; expect_lines SUBJ/subj.objective 5000
  expect_lines MPQA/mpqa.pos 3312;       expect_lines MPQA/mpqa.neg 7294
  expect_lines TREC/train_5500.label 5452; expect_lines TREC/TREC_10.label 500
  expect_lines SST/binary/sentiment-train 67349
  expect_lines SST/binary/sentiment-dev 872
  expect_lines SST/binary/sentiment-test 1821
  expect_lines MRPC/msr_paraphrase_train.txt 4076 1
  expect_lines MRPC/msr_paraphrase_test.txt 1725 1
fi
if [[ $KORSTS -eq 1 || -d "$DEST/KorSTS" ]]; then
  expect_lines KorSTS/sts-train.tsv 5749 1
  expect_lines KorSTS/sts-dev.tsv 1500 1
  expect_lines KorSTS/sts-test.tsv 1379 1
fi

if [[ ${#problems[@]} -gt 0 ]]; then
  echo "SentEval data in $DEST is incomplete (${#problems[@]} problem(s)):" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  echo "Fix: run this script online (bash $0), or with --from DIR pointing at a complete mirror in SentEval layout;" >&2
  echo "     use --sts-only if you only need STS12-16, STS-B and SICK-R." >&2
  exit 1
fi
echo "SentEval data OK in $DEST"
