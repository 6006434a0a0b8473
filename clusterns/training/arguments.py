"""Command-line flags as dataclasses (HfArgumentParser), named as in SimCSE's train.py.

Method-specific flags live beside each objective (``arguments_class``) and are
collected by the registry, so adding a method never touches this file.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from clusterns.modeling.poolers import POOLERS
from clusterns.objectives import describe_objectives

PROJECTORS = ("auto", "none", "simcse_mlp", "hf_pooler", "bn_mlp")


class UsageError(SystemExit):
    """A bad flag or input: printed as one line, exit code 2, no traceback."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Backbone checkpoint (BERT or RoBERTa folder or hub name) to start from."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Model config (folder or hub name) to use instead of the model's own."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer to use instead of the model's own."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (Rust) tokenizer."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    objective: str = field(
        default="infonce",
        metadata={"help": "Training objective (clusterns/objectives): " + describe_objectives() + "."},
    )
    temp: float = field(default=0.05, metadata={"help": "Temperature of the softmax over cosine logits."})
    pooler_type: str = field(
        default="cls",
        metadata={"help": "Pooler (clusterns/modeling/poolers.py): " + "; ".join(f"{p.name} ({p.description})" for p in POOLERS.values()) + "."},
    )
    first_layer_index: int = field(
        default=1,
        metadata={
            "help": "Which hidden state is 'first' in avg_first_last: 1 = first transformer layer (SimCSE HEAD), "
            "0 = embedding output (SimCSE paper, ClusterNS, MixCSE, DiffCSE)."
        },
    )
    projector: str = field(
        default="auto",
        metadata={
            "help": "Projector on top of the pooler in training: auto (simcse_mlp for cls, bn_mlp for --batchnorm, else none), "
            "none, simcse_mlp (Linear+tanh, freshly initialised as SimCSE's), hf_pooler (the same layer initialised from "
            "the checkpoint's pretrained HF pooler, as KoDiffCSE's contrastive vector), bn_mlp (DiffCSE Linear-BN-ReLU-Linear-BN)."
        },
    )
    mlp_only_train: bool = field(
        default=False, metadata={"help": "Use the projector only in training; evaluate on the raw pooler output."}
    )
    hard_negative_weight: float = field(
        default=0.0, metadata={"help": "Logit offset added to each anchor's own hard negative (supervised / hard-negative columns)."}
    )
    mask_duplicates: bool = field(
        default=False,
        metadata={"help": "Identical sentences in the global batch are not each other's negatives (a sentence twice in "
                          "the corpus, a repeated NLI premise): their logits leave the softmax. Off in the originals."},
    )
    dropout_prob: float | None = field(
        default=None, metadata={"help": "Override hidden and attention dropout of the backbone (default: the model's own)."}
    )
    trust_pickle: bool = field(
        default=False,
        metadata={"help": "Allow loading .bin (pickle) weights. Off by default: only safetensors are read."},
    )
    fast_dropout: bool = field(
        default=True,
        metadata={
            "help": "CPU training: the encoder's dropout (hidden and, with --packed_linear, attention) draws its mask from "
            "32-bit random integers and applies it as a float mask, about a third of torch's CPU dropout time; each "
            "element is still dropped independently with the same probability. CUDA keeps torch's kernel. "
            "--no_fast_dropout: torch's dropout (clusterns/modeling/dropout.py)."
        },
    )
    fast_linear: bool = field(
        default=True,
        metadata={
            "help": "CPU training in fp32: the encoder's linear layers compute their forward and input-gradient products "
            "with oneDNN instead of MKL's sgemm (about 1.1x faster at encoder shapes; the weight gradient stays torch.mm; "
            "same values to float rounding). CUDA and autocast keep F.linear. --no_fast_linear: F.linear "
            "(clusterns/modeling/cpu_linear.py)."
        },
    )
    onednn_primitive_cache: bool = field(
        default=False,
        metadata={
            "help": "CPU: keep oneDNN's primitive cache (its default: up to 1024 kept for reuse). Without it (the default) "
            "train.py sets ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 before building the model, unless that variable is set (it decides "
            "either way: with this flag the run warns that the flag changes nothing): "
            "oneDNN makes each primitive again per call (0.15-0.4 ms by its own timing, at most ~1.6%% of a MiniLM step; "
            "measured step times equal within noise) and the peak RSS of MiniLM training is 130-280 MB lower "
            "(clusterns/modeling/cpu_linear.py)."
        },
    )
    packed_linear: bool = field(
        default=True,
        metadata={
            "help": "Run each encoder layer's projections and feed-forward on the non-pad tokens only (attention keeps "
            "the padded layout; same embeddings to float tolerance, faster: BENCHMARKS.md). --no_packed_linear: the plain "
            "Hugging Face forward over every padded position (clusterns/modeling/packing.py)."
        },
    )
    prune_last_layer: bool = field(
        default=True,
        metadata={
            "help": "With --packed_linear and a pooler that reads one token of the last layer (cls, cls_before_pooler, "
            "PromptBERT's mask): the last layer computes keys and values for every token but its query, attention "
            "output and feed-forward for that token only (no other token's last-layer state is read; the same vectors "
            "to float tolerance; MiniLM: 1/8 fewer matrix FLOPs per step). Default: on with --packed_linear. "
            "--prune_last_layer false: every token through the last layer. Given with --no_packed_linear or an avg-type pooler "
            "it stops at start-up (it would do nothing)."
        },
    )
    packed_attention: str = field(
        default="auto",
        metadata={
            "help": "With --packed_linear, the attention's layout: padded (scatter the packed q/k/v to [N, L] and mask the "
            "pads), jagged (SDPA on nested jagged tensors of the packed tokens: CUDA's variable-length flash / "
            "memory-efficient kernels; slow on the CPU) or auto (jagged on CUDA, padded elsewhere; falls back to padded "
            "once, with a warning, where the kernels are missing)."
        },
    )


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(
        default=None, metadata={"help": "Training corpus: .txt (one sentence a line), .csv/.tsv (1-3 columns), .json/.jsonl."}
    )
    sentence_columns: str | None = field(
        default=None,
        metadata={"help": "Comma-separated column names (anchor[,positive[,hard_negative]]); default: sent0,sent1,hard_neg if present, else the first 1-3 columns."},
    )
    max_seq_length: int = field(
        default=32, metadata={"help": "Truncate training sentences to this many tokens, special tokens included."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch to max_seq_length instead of the longest sentence (slower)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the datasets cache."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    eval_data_dir: str = field(
        default="SentEval/data/downstream",
        metadata={"help": "SentEval 'downstream' folder holding STS/STSBenchmark and SICK (dev sets for evaluation during training)."},
    )
    korsts_dir: str | None = field(
        default=None, metadata={"help": "KorSTS folder (sts-dev.tsv) used by --eval_korsts."}
    )


@dataclass
class ContrastiveTrainingArguments(TrainingArguments):
    """HF TrainingArguments with SimCSE's defaults and the framework's own switches."""

    output_dir: str = field(default="result/run", metadata={"help": "Where checkpoints and the final model go."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Batch size for encoding the SentEval dev sets during training (length-sorted)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds another run."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Continue a run: a checkpoint-N folder, or 'auto' for the latest complete checkpoint in output_dir (fresh start if none)."},
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "Gradient cache (GradCache; sentence-transformers' name): run the encoder in chunks of this "
                          "many sentences, the loss on the whole batch, so a batch far larger than memory allows keeps all "
                          "its in-batch negatives; the same loss and gradients as without it (dropout masks replayed). "
                          "Default: the whole batch at once."},
    )
    eval_transfer: bool = field(
        default=False, metadata={"help": "Also evaluate the transfer tasks' dev accuracy during training."}
    )
    eval_align_uniform: bool = field(
        default=False,
        metadata={"help": "Also log alignment and uniformity (Wang & Isola) on STS-B dev at each evaluation."},
    )
    eval_korsts: bool = field(
        default=False,
        metadata={"help": "Evaluate KorSTS dev (--korsts_dir) and select checkpoints on its Spearman (Korean runs): "
                          "--metric_for_best_model becomes korsts_spearman unless given; the English dev sets are then "
                          "not evaluated unless --eval_english_sts."},
    )
    eval_sts: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluate these STS sets during training, NAME=PATH each (repeatable; any language): a TSV/CSV "
                          "file with two sentence columns and a score column (--eval_sts_columns), or a local `datasets` "
                          "folder (PATH[split] for one split of a DatasetDict). Logged as eval_NAME_spearman (cosine "
                          "Spearman over the set), selectable with --metric_for_best_model NAME_spearman."},
    )
    eval_sts_columns: str | None = field(
        default=None,
        metadata={"help": "The columns of the --eval_sts sets: three names (the first line is the header) or 0-based "
                          "indices, sentence 1, sentence 2, score. Default: sentence1,sentence2,score (KorSTS, MTEB and "
                          "HF STS sets)."},
    )
    # True so that a bare --eval_english_sts parses; not given, parse_args sets None (resolved with --eval_korsts).
    eval_english_sts: bool | None = field(
        default=True,
        metadata={"help": "Evaluate the English dev sets (STS-B dev, SICK trial; --eval_data_dir) during training. Default: "
                          "yes, except with --eval_korsts, which evaluates KorSTS dev alone (a Korean run needs no English "
                          "data); --eval_english_sts with --eval_korsts evaluates both."},
    )
    early_stop: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement of metric_for_best_model."}
    )
    nan_policy: str = field(
        default="stop",
        metadata={"help": "On a non-finite loss or gradient: stop (raise naming the step; nothing is applied or saved) or skip (drop that update entirely: no optimizer/scheduler step, objective buffers rolled back; logged with its step)."},
    )
    ddp_gradient: str = field(
        default="exact",
        metadata={"help": "Under DDP (torchrun): exact (default: each rank's own rows' contrastive gradient is scaled by "
                          "the world size W, so DDP's average is the one-process gradient of the global batch) or "
                          "original (not scaled, as SimCSE and its forks: the contrastive gradient is 1/W of that, an "
                          "effective learning rate of lr/W for the contrastive terms). No effect on one process."},
    )
    nan_check: str = field(
        default="auto",
        metadata={"help": "When the --nan_policy verdict is read: every_step (before each update: one host sync per "
                          "update), deferred (the fused AdamW skips a bad update on the device; verdicts read at logging "
                          "steps, checkpoints and the end: no host sync per step; the LR schedule advances over a dropped "
                          "update) or auto (deferred on a CUDA GPU with the fused AdamW and no fp16 scaler, else every_step)."},
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "HF's filter of non-finite losses from the logged loss (two host syncs per step). Off and "
                          "refused when given: --nan_policy already keeps dropped updates out of the logged loss and "
                          "train_loss."},
    )
    max_consecutive_skips: int = field(
        default=5,
        metadata={"help": "With --nan_policy skip: stop the run when more than this many updates in a row were dropped "
                          "as non-finite (a diverged run or broken weights; skipping on would save a model that never "
                          "trained). 0: no limit."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every column."})
    logging_steps: float = field(default=500, metadata={"help": "Log every N steps (SimCSE: 500)."})
    auto_mixed_precision: bool = field(
        default=True,
        metadata={
            "help": "On a CUDA GPU without --fp16/--bf16, train in mixed precision: bf16 where the GPU supports it "
            "(Ampere and newer), fp16 otherwise. --auto_mixed_precision false: full fp32, as the original code "
            "without --fp16. Nothing changes on the CPU."
        },
    )


# SimCSE-era flag names that current transformers renamed.
FLAG_ALIASES = {"--evaluation_strategy": "--eval_strategy", "--no_cuda": "--use_cpu"}
TRAINING_FIELDS = {f.name for f in fields(TrainingArguments)}
if "warmup_ratio" not in TRAINING_FIELDS:
    # transformers 5 folded --warmup_ratio into --warmup_steps (a value below 1 is a ratio)
    FLAG_ALIASES["--warmup_ratio"] = "--warmup_steps"


def _is_ratio(value: str) -> bool:
    try:
        return 0.0 < float(value) < 1.0
    except ValueError:
        return False


REPEATABLE_FLAGS = ("--eval_sts",)  # list flags that may be given several times (argparse would keep the last)


def merge_repeated_flags(argv: list[str], flags=REPEATABLE_FLAGS) -> list[str]:
    """`--eval_sts a=x --seed 1 --eval_sts b=y` -> `--seed 1 --eval_sts a=x b=y`: every value of a repeatable list
    flag kept (argparse's nargs='+' keeps only the last occurrence's)."""
    values: dict[str, list[str]] = {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in flags:
            collected = values.setdefault(name, [])
            if eq:
                collected.append(value)
            i += 1
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                collected.append(argv[i])
                i += 1
            continue
        out.append(argv[i])
        i += 1
    for name, collected in values.items():
        out += [name, *collected]
    return out


def normalise_argv(argv: list[str]) -> list[str]:
    """Rename legacy flags (also in --flag=value form) so a SimCSE command line runs unchanged; on
    transformers 4.x, a fractional --warmup_steps (5.x's spelling of a ratio) becomes --warmup_ratio."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name == "--warmup_steps" and "warmup_ratio" in TRAINING_FIELDS:
            if _is_ratio(value if eq else (argv[i + 1] if i + 1 < len(argv) else "")):
                out.append("--warmup_ratio" + eq + value)
                continue
        out.append(FLAG_ALIASES.get(name, name) + eq + value if name in FLAG_ALIASES else arg)
    return out
