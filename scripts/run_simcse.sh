#!/usr/bin/env bash
# SimCSE's published recipes (princeton-nlp/SimCSE README table and run_unsup_example.sh / run_sup_example.sh).
#
#   bash scripts/run_simcse.sh CONFIG [--dry_run] [extra train.py flags...]
#
# CONFIG:
#   unsup-bert-base     bert-base-uncased, wiki1m, batch 64,  lr 3e-5, 1 epoch, pooler cls + --mlp_only_train, test cls_before_pooler
#   unsup-bert-large    bert-large-uncased, batch 64,  lr 1e-5
#   unsup-roberta-base  roberta-base,      batch 512, lr 1e-5
#   unsup-roberta-large roberta-large,     batch 512, lr 3e-5
#   sup-bert-base       bert-base-uncased, nli_for_simcse.csv (sent0,sent1,hard_neg), batch 512, lr 5e-5, 3 epochs, pooler cls (MLP at test)
#   sup-bert-large      lr 1e-5;  sup-roberta-base lr 5e-5;  sup-roberta-large lr 1e-5
# All: max_seq_length 32, temp 0.05, fp16 on GPU, eval on STS-B dev every 125 steps, best checkpoint reloaded, seed 42;
# then evaluation.py --mode test --task_set sts with the test pooler.
#
# Environment overrides: MODEL, TRAIN_FILE, OUTPUT_DIR, NUM_GPU (default 1; 0 = CPU; >1 = torchrun DDP with the
# per-device batch = global batch / NUM_GPU), EVAL_DATA_DIR (SentEval downstream folder), TEST_DATA_DIR, SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/recipe.sh

CONFIGS=(unsup-bert-base unsup-bert-large unsup-roberta-base unsup-roberta-large sup-bert-base sup-bert-large sup-roberta-base sup-roberta-large)
recipe_parse_args "" "$@"

MAX_LEN=32
TEMP=0.05
EVAL_STEPS=125
FP16=1
case "$CONFIG" in
    unsup-*) MODE=unsup; TRAIN_FILE_DEFAULT=data/wiki1m_for_simcse.txt; EPOCHS=1; MLP_ONLY_TRAIN=1; TEST_POOLER=cls_before_pooler ;;
    sup-*)   MODE=sup;   TRAIN_FILE_DEFAULT=data/nli_for_simcse.csv;   EPOCHS=3; MLP_ONLY_TRAIN=0; TEST_POOLER=cls ;;
esac
case "$CONFIG" in
    unsup-bert-base)     MODEL_DEFAULT=bert-base-uncased;  GLOBAL_BATCH=64;  LR=3e-5 ;;
    unsup-bert-large)    MODEL_DEFAULT=bert-large-uncased; GLOBAL_BATCH=64;  LR=1e-5 ;;
    unsup-roberta-base)  MODEL_DEFAULT=roberta-base;       GLOBAL_BATCH=512; LR=1e-5 ;;
    unsup-roberta-large) MODEL_DEFAULT=roberta-large;      GLOBAL_BATCH=512; LR=3e-5 ;;
    sup-bert-base)       MODEL_DEFAULT=bert-base-uncased;  GLOBAL_BATCH=512; LR=5e-5 ;;
    sup-bert-large)      MODEL_DEFAULT=bert-large-uncased; GLOBAL_BATCH=512; LR=1e-5 ;;
    sup-roberta-base)    MODEL_DEFAULT=roberta-base;       GLOBAL_BATCH=512; LR=5e-5 ;;
    sup-roberta-large)   MODEL_DEFAULT=roberta-large;      GLOBAL_BATCH=512; LR=1e-5 ;;
esac
# The published test figures of the configuration (SEEDS= summaries put the seeds' mean beside them).
PUBLISHED_SOURCE="SimCSE (Gao et al., EMNLP 2021), Table 5 and appendix; README averages"
case "$CONFIG" in
    unsup-bert-base)     PUBLISHED="STS12=68.40,STS13=82.41,STS14=74.38,STS15=80.91,STS16=78.56,STS-B=76.85,SICK-R=72.23,Avg.=76.25" ;;
    unsup-bert-large)    PUBLISHED="STS12=70.88,STS13=84.16,STS14=76.43,STS15=84.50,STS16=79.76,STS-B=79.26,SICK-R=73.88,Avg.=78.41" ;;
    unsup-roberta-base)  PUBLISHED="STS12=70.16,STS13=81.77,STS14=73.24,STS15=81.36,STS16=80.65,STS-B=80.22,SICK-R=68.56,Avg.=76.57" ;;
    unsup-roberta-large) PUBLISHED="STS12=72.86,STS13=83.99,STS14=75.62,STS15=84.77,STS16=81.80,STS-B=81.98,SICK-R=71.26,Avg.=78.90" ;;
    sup-bert-base)       PUBLISHED="STS12=75.30,STS13=84.67,STS14=80.19,STS15=85.40,STS16=80.82,STS-B=84.25,SICK-R=80.39,Avg.=81.57" ;;
    sup-bert-large)      PUBLISHED="STS12=75.78,STS13=86.33,STS14=80.44,STS15=86.06,STS16=80.86,STS-B=84.87,SICK-R=81.14,Avg.=82.21" ;;
    sup-roberta-base)    PUBLISHED="STS12=76.53,STS13=85.21,STS14=80.95,STS15=86.03,STS16=82.57,STS-B=85.83,SICK-R=80.50,Avg.=82.52" ;;
    sup-roberta-large)   PUBLISHED="STS12=77.46,STS13=87.27,STS14=82.36,STS15=86.66,STS16=83.93,STS-B=86.70,SICK-R=81.95,Avg.=83.76" ;;
esac

MODEL=${MODEL:-$MODEL_DEFAULT}
TRAIN_FILE=${TRAIN_FILE:-$TRAIN_FILE_DEFAULT}
OUTPUT_DIR=${OUTPUT_DIR:-result/${CONFIG}-simcse}
SEED=${SEED:-42}
recipe_devices

ARGS=(
    --model_name_or_path "$MODEL"
    --train_file "$TRAIN_FILE"
    --output_dir "$OUTPUT_DIR"
    --objective infonce
    --num_train_epochs "$EPOCHS"
    --per_device_train_batch_size "$PER_DEVICE_BATCH"
    --learning_rate "$LR"
    --max_seq_length "$MAX_LEN"
    --evaluation_strategy steps
    --metric_for_best_model stsb_spearman
    --load_best_model_at_end
    --eval_steps "$EVAL_STEPS"
    --pooler_type cls
    --temp "$TEMP"
    --seed "$SEED"
    --overwrite_output_dir
    --do_train
    --do_eval
)
if (( MLP_ONLY_TRAIN )); then ARGS+=(--mlp_only_train); fi
recipe_common_args
EVAL_ARGS=(--model_name_or_path "$OUTPUT_DIR" --output_json "$OUTPUT_DIR/eval_test.json" --pooler "$TEST_POOLER" --task_set sts --mode test)

if (( DRY_RUN )); then
    recipe_print_config
    echo "mode=$MODE"
    echo "learning_rate=$LR"
    echo "mlp_only_train=$MLP_ONLY_TRAIN"
    echo "test_pooler=$TEST_POOLER"
fi
recipe_run
