# Shared pieces of the recipe scripts (sourced, not run): device count -> per-device batch and
# launcher, and the dry-run printer. Inputs: NUM_GPU (env, default 1; 0 = CPU), GLOBAL_BATCH.

# Sets PER_DEVICE_BATCH and LAUNCH (torchrun when NUM_GPU > 1) from NUM_GPU and GLOBAL_BATCH.
recipe_devices() {
    NUM_GPU=${NUM_GPU:-1}
    if ! [[ "$NUM_GPU" =~ ^[0-9]+$ ]]; then echo "error: NUM_GPU must be a non-negative integer, got '$NUM_GPU'" >&2; exit 2; fi
    local devices=$(( NUM_GPU > 0 ? NUM_GPU : 1 ))
    if (( GLOBAL_BATCH % devices != 0 )); then
        echo "error: the global batch $GLOBAL_BATCH is not divisible by NUM_GPU=$NUM_GPU" >&2; exit 2
    fi
    PER_DEVICE_BATCH=$(( GLOBAL_BATCH / devices ))
    if (( NUM_GPU > 1 )); then LAUNCH=(torchrun --nproc_per_node "$NUM_GPU" train.py); else LAUNCH=(python train.py); fi
    # One process, one GPU: with several visible GPUs train.py refuses to start (nn.DataParallel would shrink the
    # negatives to one GPU's slice), so pin the first one unless CUDA_VISIBLE_DEVICES already chooses.
    if (( NUM_GPU == 1 )); then export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}; fi
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
