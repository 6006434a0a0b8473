#!/usr/bin/env bash
# ClusterNS non-prompt recipes (djz233/ClusterNS run_non_prompt.sh and the README "Hyperparameters" table).
#
#   bash run_non_prompt.sh (or scripts/run_non_prompt.sh) [CONFIG] [--dry_run] [extra train.py flags...]
#
# CONFIG (README table, `a*b` = per-device a x b GPUs; every config: K 128, --enable_hardneg, lr 5e-5, 1 epoch,
# max_seq_length 32, pooler cls + --mlp_only_train, fp16, eval/save every 125 steps on STS-B dev with best-checkpoint
# reload and early stop 3, seed 42, temp 0.05; test: evaluation.py --pooler cls_before_pooler --task_set sts --mode test):
#   bert-base      bert-base-uncased   batch 256 (1 GPU)  kmeans_lr 1e-3  kmean_cosine 0.4  bml 1e-3 / alpha 0    / beta 0.3
#   bert-large     bert-large-uncased  batch 128*4        kmeans_lr 1e-3  kmean_cosine 0.5  bml 5e-5 / alpha 0.25 / beta 0.3
#   roberta-base   roberta-base        batch 256*2        kmeans_lr 1e-3  kmean_cosine 0.4  bml 1e-4 / alpha 0.2  / beta 0.5
#                  (default; = the shipped run_non_prompt.sh)
#   roberta-large  roberta-large       batch 128*4        kmeans_lr 5e-4  kmean_cosine 0.4  bml 0 (no BML)
#
# Environment overrides: MODEL, TRAIN_FILE, OUTPUT_DIR, NUM_GPU (default: the published GPU count; 0 = CPU without
# fp16; >1 = torchrun DDP; the per-device batch is the global batch / NUM_GPU so the gathered batch, which the
# clustering sees, matches the published one), EVAL_DATA_DIR (SentEval downstream folder for dev evaluation),
# TEST_DATA_DIR (evaluation.py --data_dir), TASK_SET (default sts), SEED (default 42).
# Extra flags are appended to train.py's command line (e.g. the corrected switches --fn_handling mask_denominator).
set -euo pipefail
source "$(dirname "$0")/lib/recipe.sh"

CONFIGS=(bert-base bert-large roberta-base roberta-large)
recipe_parse_args roberta-base "$@"

# Shared published values (run_non_prompt.sh at 84cbd49).
TRAIN_FILE_DEFAULT=data/wiki1m_for_simcse.txt
LR=5e-5
EPOCHS=1
MAX_LEN=32
EVAL_STEPS=125
TEMP=0.05
KMEANS=128
KMEANS_OPTIM=momentum
EARLY_STOP=3
# The original logged every 500 steps (HF's default): 3 points for a 1,954-step run, too few for plot_training.py.
# Logging does not change training.
LOGGING_STEPS=25
TRAIN_POOLER=cls
TEST_POOLER=cls_before_pooler
FP16=1
case "$CONFIG" in
    bert-base)
        MODEL_DEFAULT=bert-base-uncased; GLOBAL_BATCH=256; PUBLISHED_GPUS=1
        KMEANS_LR=1e-3; KMEAN_COSINE=0.4; BML_WEIGHT=1e-3; BML_ALPHA=0; BML_BETA=0.3 ;;
    bert-large)
        MODEL_DEFAULT=bert-large-uncased; GLOBAL_BATCH=512; PUBLISHED_GPUS=4
        KMEANS_LR=1e-3; KMEAN_COSINE=0.5; BML_WEIGHT=5e-5; BML_ALPHA=0.25; BML_BETA=0.3 ;;
    roberta-base)
        MODEL_DEFAULT=roberta-base; GLOBAL_BATCH=512; PUBLISHED_GPUS=2
        KMEANS_LR=1e-3; KMEAN_COSINE=0.4; BML_WEIGHT=1e-4; BML_ALPHA=0.2; BML_BETA=0.5 ;;
    roberta-large)
        # The table gives no alpha/beta ("-"): BML is off (weight 0); the code defaults are passed.
        MODEL_DEFAULT=roberta-large; GLOBAL_BATCH=512; PUBLISHED_GPUS=4
        KMEANS_LR=5e-4; KMEAN_COSINE=0.4; BML_WEIGHT=0; BML_ALPHA=0.2; BML_BETA=0.5 ;;
esac
# The published test figure (SEEDS= summaries put the seeds' mean beside it): the Avg. STS of the released checkpoint.
PUBLISHED_SOURCE="ClusterNS README (djz233/ClusterNS), Avg. STS of the released checkpoints (per-task figures: the paper)"
case "$CONFIG" in
    bert-base) PUBLISHED="Avg.=77.55" ;;
    bert-large) PUBLISHED="Avg.=79.19" ;;
    roberta-base) PUBLISHED="Avg.=77.98" ;;
    roberta-large) PUBLISHED="Avg.=79.43" ;;
esac

MODEL=${MODEL:-$MODEL_DEFAULT}
TRAIN_FILE=${TRAIN_FILE:-$TRAIN_FILE_DEFAULT}
OUTPUT_DIR=${OUTPUT_DIR:-result/clusterns-${CONFIG}}
SEED=${SEED:-42}
TASK_SET=${TASK_SET:-sts}

recipe_devices "$PUBLISHED_GPUS"

ARGS=(
    --model_name_or_path "$MODEL"
    --train_file "$TRAIN_FILE"
    --output_dir "$OUTPUT_DIR"
    --objective clusterns
    --kmeans "$KMEANS"
    --kmean_cosine "$KMEAN_COSINE"
    --kmeans_lr "$KMEANS_LR"
    --kmeans_optim "$KMEANS_OPTIM"
    --enable_hardneg
    --bml_weight "$BML_WEIGHT"
    --bml_alpha "$BML_ALPHA"
    --bml_beta "$BML_BETA"
    --num_train_epochs "$EPOCHS"
    --per_device_train_batch_size "$PER_DEVICE_BATCH"
    --learning_rate "$LR"
    --max_seq_length "$MAX_LEN"
    --logging_steps "$LOGGING_STEPS"
    --eval_strategy steps
    --eval_steps "$EVAL_STEPS"
    --save_steps "$EVAL_STEPS"
    --save_total_limit 1
    --metric_for_best_model stsb_spearman
    --load_best_model_at_end
    --early_stop "$EARLY_STOP"
    --pooler_type "$TRAIN_POOLER"
    --mlp_only_train
    --first_layer_index 0
    --temp "$TEMP"
    --seed "$SEED"
    --overwrite_output_dir
    --do_train
)
recipe_common_args

EVAL_ARGS=(--model_name_or_path "$OUTPUT_DIR" --output_json "$OUTPUT_DIR/eval_test.json" --pooler "$TEST_POOLER" --task_set "$TASK_SET" --mode test)

if (( DRY_RUN )); then
    recipe_print_config
    echo "published_num_gpu=$PUBLISHED_GPUS"
    echo "learning_rate=$LR"
    echo "eval_steps=$EVAL_STEPS"
    echo "early_stop=$EARLY_STOP"
    echo "kmeans=$KMEANS"
    echo "kmeans_lr=$KMEANS_LR"
    echo "kmeans_optim=$KMEANS_OPTIM"
    echo "kmean_cosine=$KMEAN_COSINE"
    echo "enable_hardneg=True"
    echo "bml_weight=$BML_WEIGHT"
    echo "bml_alpha=$BML_ALPHA"
    echo "bml_beta=$BML_BETA"
    echo "fp16=$FP16"
    echo "train_pooler=$TRAIN_POOLER (+ MLP in training, --mlp_only_train)"
    echo "test_pooler=$TEST_POOLER"
    echo "task_set=$TASK_SET"
fi
recipe_run
