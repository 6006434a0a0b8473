#!/usr/bin/env bash
# MixCSE recipes (BDBC-KG-NLP/MixCSE_AAAI2022 run_unsup_example.sh and README; Zhang et al., AAAI 2022).
#
#   bash scripts/run_mixcse.sh [CONFIG] [--dry_run] [extra train.py flags...]
#
# CONFIG:
#   bert-base            (default) the published script, faithful: bert-base-uncased, --lambdas 0.2, global batch 64,
#                        lr 3e-5, 1 epoch, max_seq_length 32, eval every 125 steps, seed 42, no fp16, repo mode with
#                        masked logits multiplied by 0. Train pooler cls (+MLP), selection on the MLP output (no
#                        --mlp_only_train), test pooler cls_before_pooler.
#   bert-base-lambda0.6  the script before 2022-06-14 (--lambdas 0.6), otherwise as bert-base.
#   bert-base-corrected  the corrected switches: --mask_fill neginf, selection on raw CLS (--mlp_only_train), test
#                        pooler cls_before_pooler (= selection), fp16 on GPU (SimCSE's precision).
#   bert-base-paper      --mixcse_mode paper (one mixed negative per anchor; unverified), otherwise as bert-base.
#   bert-base-sup        the deleted supervised script: NLI triples, --lambdas 0.3, global batch 512 (128 x 4 GPUs),
#                        lr 5e-5, 3 epochs, fp16, pooler cls with MLP at test.
#
# Environment overrides: MODEL, TRAIN_FILE, OUTPUT_DIR, NUM_GPU (default 1; 0 = CPU; >1 = torchrun DDP, the
# per-device batch is the global batch / NUM_GPU so the gathered batch matches the published one),
# EVAL_DATA_DIR (SentEval downstream folder for dev evaluation), TEST_DATA_DIR (evaluation.py --data_dir),
# TASK_SET (evaluation.py --task_set, default full as in the original script: STS and transfer), SEED (default 42).
# Every configuration logs alignment and uniformity on STS-B dev at each evaluation (--eval_align_uniform), as
# the original trainer's cal_align_uniform did (a diagnostic; selection stays on stsb_spearman).
set -euo pipefail
source "$(dirname "$0")/lib/recipe.sh"

CONFIGS=(bert-base bert-base-lambda0.6 bert-base-corrected bert-base-paper bert-base-sup)
recipe_parse_args bert-base "$@"

# Published values (run_unsup_example.sh at 884145e).
MODEL_DEFAULT=bert-base-uncased
TRAIN_FILE_DEFAULT=data/wiki1m_for_simcse.txt
GLOBAL_BATCH=64
LR=3e-5
EPOCHS=1
MAX_LEN=32
EVAL_STEPS=125
TEMP=0.05
LAMBDAS=0.2
MODE=repo
MASK_FILL=zero
TRAIN_POOLER=cls            # CLS + MLP projector in training
MLP_ONLY_TRAIN=0            # 0: dev selection on the MLP output (original); 1: on raw CLS
TEST_POOLER=cls_before_pooler
FP16=0
case "$CONFIG" in
    bert-base) ;;
    bert-base-lambda0.6) LAMBDAS=0.6 ;;
    bert-base-corrected) MASK_FILL=neginf; MLP_ONLY_TRAIN=1; FP16=1 ;;
    bert-base-paper) MODE=paper ;;
    bert-base-sup)
        TRAIN_FILE_DEFAULT=data/nli_for_simcse.csv; LAMBDAS=0.3; GLOBAL_BATCH=512; LR=5e-5; EPOCHS=3
        FP16=1; TEST_POOLER=cls ;;
esac
# No published figures: MixCSE's repository has no results table, and the paper's are not recorded here (SEEDS=
# summaries then show the seeds' mean and spread only).
PUBLISHED=""
PUBLISHED_SOURCE=""

MODEL=${MODEL:-$MODEL_DEFAULT}
TRAIN_FILE=${TRAIN_FILE:-$TRAIN_FILE_DEFAULT}
OUTPUT_DIR=${OUTPUT_DIR:-result/mixcse-${CONFIG}}
SEED=${SEED:-42}
TASK_SET=${TASK_SET:-full}

recipe_devices

ARGS=(
    --model_name_or_path "$MODEL"
    --train_file "$TRAIN_FILE"
    --output_dir "$OUTPUT_DIR"
    --objective mixcse
    --lambdas "$LAMBDAS"
    --mixcse_mode "$MODE"
    --mask_fill "$MASK_FILL"
    --num_train_epochs "$EPOCHS"
    --per_device_train_batch_size "$PER_DEVICE_BATCH"
    --learning_rate "$LR"
    --max_seq_length "$MAX_LEN"
    --eval_strategy steps
    --eval_steps "$EVAL_STEPS"
    --metric_for_best_model stsb_spearman
    --load_best_model_at_end
    --pooler_type "$TRAIN_POOLER"
    --first_layer_index 0
    --temp "$TEMP"
    --seed "$SEED"
    --overwrite_output_dir
    --do_train
    --do_eval
    --eval_align_uniform
)
if (( MLP_ONLY_TRAIN )); then ARGS+=(--mlp_only_train); fi
recipe_common_args

EVAL_ARGS=(--model_name_or_path "$OUTPUT_DIR" --output_json "$OUTPUT_DIR/eval_test.json" --pooler "$TEST_POOLER" --task_set "$TASK_SET" --mode test)

if (( MLP_ONLY_TRAIN )); then SELECT_POOLER="cls_before_pooler (raw CLS, --mlp_only_train)"; else SELECT_POOLER="cls (CLS + MLP output)"; fi

if (( DRY_RUN )); then
    recipe_print_config
    echo "learning_rate=$LR"
    echo "eval_steps=$EVAL_STEPS"
    echo "lambdas=$LAMBDAS"
    echo "mixcse_mode=$MODE"
    echo "mask_fill=$MASK_FILL"
    echo "fp16=$FP16"
    echo "train_pooler=$TRAIN_POOLER"
    echo "select_pooler=$SELECT_POOLER"
    echo "test_pooler=$TEST_POOLER"
    echo "align_uniform=True"
    echo "task_set=$TASK_SET"
fi
recipe_run
