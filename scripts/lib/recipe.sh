# Shared pieces of the recipe scripts (sourced, not run): device count -> per-device batch and
# launcher, the common train.py flags, the dry-run printer and the run itself.
# Inputs: NUM_GPU (env; GPUs per node, 0 = CPU), NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS (env), GLOBAL_BATCH, FP16, DRY_RUN, ARGS, EVAL_ARGS, EXTRA, OUTPUT_DIR, EVAL_DATA_DIR,
# TEST_DATA_DIR, MINI_BATCH_SIZE and SEEDS (env), PUBLISHED and PUBLISHED_SOURCE (the recipe's published figures).

# recipe_parse_args DEFAULT_CONFIG "$@": reads the script's command line against the CONFIGS array (the script's
# configuration names). Sets CONFIG (the named configuration, else DEFAULT_CONFIG; empty = one must be named),
# DRY_RUN (--dry_run) and EXTRA (every other flag with its values, passed on to train.py). A word that is neither a
# configuration nor a flag's value is refused, naming the configurations.
recipe_parse_args() {
    local arg name
    CONFIG=$1; shift
    DRY_RUN=0
    EXTRA=()
    for arg in "$@"; do
        if [ "$arg" == --dry_run ]; then DRY_RUN=1; continue; fi
        for name in "${CONFIGS[@]}"; do
            if [ "$arg" == "$name" ]; then CONFIG=$arg; continue 2; fi
        done
        if [[ "$arg" == -* ]] || (( ${#EXTRA[@]} )); then
            EXTRA+=("$arg")  # a flag for train.py, or the value of one
        else
            echo "error: unknown configuration '$arg' (one of: ${CONFIGS[*]})" >&2; exit 2
        fi
    done
    if [ -n "${SEED:-}" ] && [ -n "${SEEDS:-}" ]; then  # checked before the script defaults SEED
        echo "error: SEED=$SEED and SEEDS='$SEEDS' are both set; SEEDS runs one training per seed: unset SEED" >&2; exit 2
    fi
    if [ -z "$CONFIG" ]; then
        echo "usage: bash $0 CONFIG [--dry_run] [train.py flags...]; CONFIG one of: ${CONFIGS[*]}" >&2; exit 2
    fi
}

# recipe_devices [DEFAULT_NUM_GPU]: sets PER_DEVICE_BATCH and LAUNCH from NUM_GPU (GPUs per node; default
# DEFAULT_NUM_GPU, else 1), NNODES (default 1), NODE_RANK, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS and GLOBAL_BATCH:
# torchrun when there is more than one process or MAX_RESTARTS > 0, `python train.py` otherwise; the per-device
# batch keeps the published global batch over NUM_GPU x NNODES processes. Turns FP16 off on the CPU (NUM_GPU=0).
recipe_devices() {
    NUM_GPU=${NUM_GPU:-${1:-1}}
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    MASTER_PORT=${MASTER_PORT:-29500}
    MAX_RESTARTS=${MAX_RESTARTS:-0}
    local name
    for name in NUM_GPU NNODES NODE_RANK MASTER_PORT MAX_RESTARTS; do
        if ! [[ "${!name}" =~ ^[0-9]+$ ]]; then echo "error: $name must be a non-negative integer, got '${!name}'" >&2; exit 2; fi
    done
    if (( NNODES < 1 )); then echo "error: NNODES must be at least 1, got $NNODES" >&2; exit 2; fi
    if (( NODE_RANK >= NNODES )); then echo "error: NODE_RANK=$NODE_RANK must be below NNODES=$NNODES (0 .. $((NNODES - 1)))" >&2; exit 2; fi
    if (( MASTER_PORT < 1 || MASTER_PORT > 65535 )); then echo "error: MASTER_PORT must be 1-65535, got $MASTER_PORT" >&2; exit 2; fi
    if (( NNODES > 1 )) && [ -z "${MASTER_ADDR:-}" ]; then
        echo "error: NNODES=$NNODES needs MASTER_ADDR (the address of the node with NODE_RANK=0, reachable from every node)" >&2; exit 2
    fi
    local per_node=$(( NUM_GPU > 0 ? NUM_GPU : 1 ))
    local devices=$(( per_node * NNODES ))
    if (( GLOBAL_BATCH % devices != 0 )); then
        if (( NNODES > 1 )); then
            echo "error: the global batch $GLOBAL_BATCH is not divisible by NUM_GPU x NNODES = $per_node x $NNODES processes" >&2
        else
            echo "error: the global batch $GLOBAL_BATCH is not divisible by NUM_GPU=$NUM_GPU" >&2
        fi
        exit 2
    fi
    PER_DEVICE_BATCH=$(( GLOBAL_BATCH / devices ))
    if (( NUM_GPU == 0 )); then FP16=0; fi  # no fp16 on CPU
    local restarts=()
    # torchrun --max-restarts: a dead worker restarts the group, and train.py resumes from the latest complete
    # checkpoint by itself on a restart (a fresh launch does not resume, so a changed flag is never mixed into an
    # old run's checkpoints).
    if (( MAX_RESTARTS > 0 )); then restarts=(--max-restarts "$MAX_RESTARTS"); fi
    if (( NNODES > 1 )); then
        LAUNCH=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$per_node"
                --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "${restarts[@]+"${restarts[@]}"}" train.py)
    elif (( NUM_GPU > 1 || MAX_RESTARTS > 0 )); then
        LAUNCH=(torchrun --nproc_per_node "$per_node" "${restarts[@]+"${restarts[@]}"}" train.py)
    else
        LAUNCH=(python train.py)
    fi
    # One process, one GPU: with several visible GPUs train.py refuses to start (nn.DataParallel would shrink the
    # negatives to one GPU's slice), so pin the first one unless CUDA_VISIBLE_DEVICES already chooses.
    if (( NUM_GPU == 1 )); then export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}; fi
}

# Appends the flags every recipe ends train.py's command line with: --fp16 (FP16=1), --use_cpu (NUM_GPU=0),
# --eval_data_dir (EVAL_DATA_DIR set), then the user's extra flags (EXTRA).
recipe_common_args() {
    if (( FP16 )); then ARGS+=(--fp16); fi
    # MINI_BATCH_SIZE=N: the published global batch on fewer/smaller devices, the encoder run in chunks of N
    # sentences (train.py --mini_batch_size: the same loss and gradients, less memory)
    if [ -n "${MINI_BATCH_SIZE:-}" ]; then
        if ! [[ "$MINI_BATCH_SIZE" =~ ^[0-9]+$ ]] || (( MINI_BATCH_SIZE < 1 )); then
            echo "error: MINI_BATCH_SIZE must be a positive integer, got '$MINI_BATCH_SIZE'" >&2; exit 2
        fi
        ARGS+=(--mini_batch_size "$MINI_BATCH_SIZE")
    fi
    if (( NUM_GPU == 0 )); then ARGS+=(--use_cpu); fi
    if [ -n "${EVAL_DATA_DIR:-}" ]; then ARGS+=(--eval_data_dir "$EVAL_DATA_DIR"); fi
    ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")
}

# --dry_run: the configuration lines every recipe shows (the script adds its method's own after them).
recipe_print_config() {
    echo "config=$CONFIG"
    echo "model=$MODEL"
    echo "train_file=$TRAIN_FILE"
    echo "output_dir=$OUTPUT_DIR"
    echo "num_gpu=$NUM_GPU"
    echo "nnodes=$NNODES"
    echo "node_rank=$NODE_RANK"
    echo "max_restarts=$MAX_RESTARTS"
    echo "global_batch_size=$GLOBAL_BATCH"
    echo "per_device_train_batch_size=$PER_DEVICE_BATCH"
    echo "num_train_epochs=$EPOCHS"
    echo "max_seq_length=$MAX_LEN"
    echo "temp=$TEMP"
    echo "mini_batch_size=${MINI_BATCH_SIZE:-none}"
}

# Prints a command with one `--flag value` per line: recipe_print_command "python train.py" ARGS...
recipe_print_command() {
    local line=""
    echo "$1"; shift
    for a in "$@"; do
        if [[ "$a" == --* ]]; then
            [ -n "$line" ] && echo "  $line"
            line="$a"
        else
            line="$line $(printf '%q' "$a")"
        fi
    done
    [ -n "$line" ] && echo "  $line"
    return 0
}

# recipe_replace_value ARRAY FLAG VALUE: sets the value after every FLAG in the named array.
recipe_replace_value() {
    local -n array=$1
    local i
    for (( i = 0; i < ${#array[@]} - 1; i++ )); do
        if [ "${array[$i]}" == "$2" ]; then array[$((i + 1))]=$3; fi
    done
}

# SEEDS="42 1 2" (env): the seeds of a multi-seed run, each trained and tested in OUTPUT_DIR/seed-S/. Sets SEED_LIST.
recipe_seeds() {
    SEED_LIST=()
    if [ -z "${SEEDS:-}" ]; then return 0; fi
    local seed
    for seed in ${SEEDS//,/ }; do
        if ! [[ "$seed" =~ ^[0-9]+$ ]]; then echo "error: SEEDS must be non-negative integers, got '$seed' in SEEDS='$SEEDS'" >&2; exit 2; fi
        SEED_LIST+=("$seed")
    done
    if (( ${#SEED_LIST[@]} == 0 )); then echo "error: SEEDS='$SEEDS' names no seed" >&2; exit 2; fi
    if (( ${NNODES:-1} > 1 )); then echo "error: SEEDS runs the seeds one after another on one node; unset SEEDS for NNODES > 1" >&2; exit 2; fi
    if [ "$(printf '%s\n' "${SEED_LIST[@]}" | sort | uniq -d)" != "" ]; then echo "error: SEEDS='$SEEDS' repeats a seed" >&2; exit 2; fi
    for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
        case "${arg%%=*}" in
            --seed|--output_dir) echo "error: SEEDS sets each run's ${arg%%=*} (OUTPUT_DIR/seed-S); drop ${arg%%=*} from the flags" >&2; exit 2 ;;
        esac
    done
}

# One seed's training and test commands (SEED_ARGS, SEED_EVAL_ARGS) for OUTPUT_DIR/seed-$1.
recipe_seed_commands() {
    SEED_ARGS=("${ARGS[@]}")
    SEED_EVAL_ARGS=("${EVAL_ARGS[@]}")
    recipe_replace_value SEED_ARGS --output_dir "$OUTPUT_DIR/seed-$1"
    recipe_replace_value SEED_ARGS --seed "$1"
    recipe_replace_value SEED_EVAL_ARGS --model_name_or_path "$OUTPUT_DIR/seed-$1"
    recipe_replace_value SEED_EVAL_ARGS --output_json "$OUTPUT_DIR/seed-$1/eval_test.json"
}

# DRY_RUN=1: prints the training and test commands (each seed's with SEEDS) and exits. Otherwise trains (LAUNCH
# ARGS), tests (evaluation.py EVAL_ARGS, reading TEST_DATA_DIR when set) and adds the test table to the model card in
# OUTPUT_DIR. With SEEDS: one run per seed in OUTPUT_DIR/seed-S/ (a failed seed is marked and the others go on), then
# OUTPUT_DIR/summary.json and summary.md (mean, std, min, max over the seeds, the published figure PUBLISHED of
# PUBLISHED_SOURCE and the difference); the exit code is 1 if a seed failed.
recipe_run() {
    if [ -n "${TEST_DATA_DIR:-}" ]; then EVAL_ARGS+=(--data_dir "$TEST_DATA_DIR"); fi
    recipe_seeds
    if (( DRY_RUN )); then
        if (( ${#SEED_LIST[@]} )); then
            echo "seeds=${SEED_LIST[*]}"
            echo "published=${PUBLISHED:-none}"
            for seed in "${SEED_LIST[@]}"; do
                recipe_seed_commands "$seed"
                echo "# seed $seed"
                recipe_print_command "${LAUNCH[*]}" "${SEED_ARGS[@]}"
                recipe_print_command "python evaluation.py" "${SEED_EVAL_ARGS[@]}"
            done
            recipe_print_command "python -m clusterns.cli.seed_summary" "$OUTPUT_DIR" --seeds "${SEED_LIST[*]}"
            exit 0
        fi
        recipe_print_command "${LAUNCH[*]}" "${ARGS[@]}"
        if (( NODE_RANK > 0 )); then echo "# node $NODE_RANK trains only; node 0 runs the test"; exit 0; fi
        recipe_print_command "python evaluation.py" "${EVAL_ARGS[@]}"
        exit 0
    fi
    # The commands name train.py and evaluation.py relative to the repository root, as the originals do.
    if [ ! -f train.py ] || [ ! -f evaluation.py ]; then
        echo "error: run the recipe from the repository root (cd $(cd "$(dirname "$0")/.." && pwd)); train.py is not in $(pwd)" >&2; exit 2
    fi
    if (( NODE_RANK > 0 )); then  # another node of a multi-node run: train only; node 0 tests and writes the card
        "${LAUNCH[@]}" "${ARGS[@]}"
        return 0
    fi
    if (( ${#SEED_LIST[@]} == 0 )); then
        "${LAUNCH[@]}" "${ARGS[@]}"
        python evaluation.py "${EVAL_ARGS[@]}"
        python -m clusterns.cli.model_card "$OUTPUT_DIR"  # add the test table to the model card
        return 0
    fi
    mkdir -p "$OUTPUT_DIR"
    local seed code
    for seed in "${SEED_LIST[@]}"; do
        recipe_seed_commands "$seed"
        rm -f "$OUTPUT_DIR/seed-$seed/FAILED"
        echo "=== seed $seed: $OUTPUT_DIR/seed-$seed ===" >&2
        code=0
        "${LAUNCH[@]}" "${SEED_ARGS[@]}" || code=$?
        if (( code == 0 )); then python evaluation.py "${SEED_EVAL_ARGS[@]}" || code=$?; fi
        if (( code == 0 )); then python -m clusterns.cli.model_card "$OUTPUT_DIR/seed-$seed" || code=$?; fi
        if (( code != 0 )); then
            mkdir -p "$OUTPUT_DIR/seed-$seed"
            echo "training or test exited with code $code" > "$OUTPUT_DIR/seed-$seed/FAILED"
            echo "warning: seed $seed failed (exit code $code); the other seeds go on" >&2
        fi
    done
    python -m clusterns.cli.seed_summary "$OUTPUT_DIR" --seeds "${SEED_LIST[*]}" --config "$CONFIG" \
        ${PUBLISHED:+--published "$PUBLISHED"} ${PUBLISHED_SOURCE:+--source "$PUBLISHED_SOURCE"}
}
