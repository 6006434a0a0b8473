"""One way to build a run: command-line arguments -> (encoder, objective, data, trainer).

train.py (cli/train.py), the benchmarks (scripts/bench_train.py) and the tests all build their runs here,
so what a run is made of is written once:

    run = build_run(argv)             # parses and validates every flag, loads model and data
    run.trainer.train()

`build_run` takes in-memory training sentences instead of --train_file (`sentences=`), extra keyword
arguments for the objective (`objective_kwargs=`, e.g. a stand-in DiffCSE generator), a wrapper around
the collator and extra Trainer callbacks, for the benchmarks' measurements.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainerCallback, set_seed

from clusterns.modeling.backbones import max_positions
from clusterns.modeling.cpu_linear import ONEDNN_CACHE_VARIABLE, limit_onednn_primitive_cache, use_fast_linears
from clusterns.modeling.dropout import use_cpu_dropout
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.modeling.packing import ATTENTION_LAYOUTS, enable_packed_linear, is_packed
from clusterns.modeling.poolers import get_pooler
from clusterns.modeling.projectors import resolve_projector
from clusterns.modeling.prompt import PromptArguments, attach_prompt, enable_prompt
from clusterns.objectives import (
    Objective,
    check_flag_collisions,
    get_objective_class,
    objective_argument_classes,
    objective_names,
    unknown_objective_message,
)
from clusterns.objectives.masked_lm import MaskedLMArguments, MLMBatchMasking, build_masked_lm
from clusterns.precision import auto_mixed_precision_flag, configure_tf32
from clusterns.training.argv import given_flags
from clusterns.training.arguments import (
    ContrastiveTrainingArguments,
    DataTrainingArguments,
    ModelArguments,
    UsageError,
    merge_repeated_flags,
    normalise_argv,
)
from clusterns.training.checkpoints import RESUME_AUTO, resolve_resume_checkpoint
from clusterns.training.data import ContrastiveCollator, load_corpus, tokenize_corpus
from clusterns.training.text_corpus import ReleaseReadPages
from clusterns.harness import sts_files
from clusterns.training.dev_evaluator import SentEvalDevEvaluator
from clusterns.training.distributed import data_parallel_message
from clusterns.training.environment import environment_record
from clusterns.training.model import DDP_GRADIENTS, ContrastiveModel
from clusterns.training.nan_guard import NAN_CHECKS
from clusterns.training.run_lock import LOCK_NAME, OutputDirLock
from clusterns.training.trainer import ContrastiveTrainer

logger = logging.getLogger("clusterns")

RUN_MARKER = "run_args.json"  # what produced an output_dir, to refuse mixing two runs in one folder


# ---- arguments ---------------------------------------------------------------------------------------
def argument_classes() -> list[type]:
    """Every flag dataclass of a run, checked for flags defined twice (the error names both owners)."""
    classes = [ModelArguments, DataTrainingArguments, *objective_argument_classes(), PromptArguments, MaskedLMArguments,
               ContrastiveTrainingArguments]
    check_flag_collisions([c for c in classes if c is not ContrastiveTrainingArguments])
    return classes


def parse_args(argv: list[str] | None = None):
    """(model_args, data_args, {dataclass: its parsed flags}, training_args)."""
    argv = merge_repeated_flags(normalise_argv(list(sys.argv[1:] if argv is None else argv)))
    # SimCSE (HF 4.2.1) saved at every evaluation when selecting the best model; `best` keeps that
    # meaning without writing a checkpoint that is not an improvement.
    if any(a.split("=")[0] == "--load_best_model_at_end" for a in argv) and not any(a.split("=")[0] == "--save_strategy" for a in argv):
        argv += ["--save_strategy", "best"]
    # No abbreviations: argparse would take `--bml_weigh` for --bml_weight, out of sight of choose_objective's check.
    parser = HfArgumentParser(argument_classes(), allow_abbrev=False)
    model_args, data_args, *extra_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.auto_mixed_precision:
        flag = auto_mixed_precision_flag(training_args.fp16, training_args.bf16, training_args.use_cpu)
        if flag:  # parse again: TrainingArguments sets up its mixed precision while it is built
            logger.info("mixed precision on by default on this GPU: %s (--auto_mixed_precision false for fp32)", flag)
            model_args, data_args, *extra_args, training_args = parser.parse_args_into_dataclasses(args=[*argv, flag])
    given = given_flags(argv)
    choose_objective(model_args, given)
    # Switches whose default depends on other flags: None when the command line does not set them.
    if not {"eval_english_sts", "no_eval_english_sts"} & set(given):
        training_args.eval_english_sts = None  # on, except with --eval_korsts (build_dev_evaluator)
    for extra in extra_args:
        if isinstance(extra, MaskedLMArguments) and not {"mlm_clone_inputs", "no_mlm_clone_inputs"} & set(given):
            extra.mlm_clone_inputs = None  # the objective's original (build_run)
    if "prune_last_layer" not in given:
        model_args.prune_last_layer = None  # on wherever the layers are packed
    if "log_on_each_node" not in given:
        # One log for the whole run: the global rank 0's (HF's default prints the training log on every node).
        training_args.log_on_each_node = False
    if training_args.eval_korsts and "metric_for_best_model" not in given:
        # --eval_korsts selects on KorSTS dev Spearman unless --metric_for_best_model says otherwise
        training_args.metric_for_best_model = "korsts_spearman"
        if "greater_is_better" not in given:
            training_args.greater_is_better = True
    return model_args, data_args, {type(a): a for a in extra_args}, training_args


def objective_flags() -> dict[str, str]:
    """{command-line flag name: the objective it belongs to}, for every registered objective's own flags
    (bool flags also in their --no_ form, and their aliases)."""
    owners: dict[str, str] = {}
    for name in objective_names():
        cls = get_objective_class(name).arguments_class
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            flags = [f.name, *(alias.lstrip("-") for alias in f.metadata.get("aliases", []))]
            if f.type in (bool, "bool"):
                flags.append(f"no_{f.name}")
            for flag in flags:
                owners[flag] = name
    return owners


def fp16_without_gpu(training_args) -> bool:
    return bool(training_args.fp16) and (training_args.use_cpu or not torch.cuda.is_available())


def choose_objective(model_args, given: list[str]) -> None:
    """No method flag is silently ignored: a flag of another objective than --objective stops the run; without
    --objective, the one method whose flags are given is selected (the originals' train.py has no --objective,
    so their command lines select their method this way), and flags of two methods are an error."""
    owners = objective_flags()
    used: dict[str, list[str]] = {}
    for flag in given:
        if flag in owners:
            used.setdefault(owners[flag], []).append(f"--{flag}")
    explicit = "objective" in given
    if explicit:
        for method, flags in used.items():
            if method != model_args.objective:
                raise UsageError(
                    f"{', '.join(flags)} belong{'s' if len(flags) == 1 else ''} to --objective {method}, but --objective "
                    f"{model_args.objective} was given: {'it' if len(flags) == 1 else 'they'} would be ignored; drop "
                    f"{'it' if len(flags) == 1 else 'them'} or use --objective {method}")
        return
    if len(used) > 1:
        listed = "; ".join(f"{', '.join(flags)} ({method})" for method, flags in sorted(used.items()))
        raise UsageError(f"flags of several objectives were given without --objective: {listed}; choose one with --objective")
    if used:
        (method, flags), = used.items()
        model_args.objective = method
        logger.info("objective %s inferred from %s (pass --objective to choose it explicitly)", method, " ".join(flags))


def check_output_dir(training_args, model_args, data_args) -> None:
    out = training_args.output_dir
    if not os.path.isdir(out) or not [e for e in os.listdir(out) if e != LOCK_NAME] or training_args.overwrite_output_dir:
        return
    if training_args.resume_from_checkpoint:
        return
    marker = os.path.join(out, RUN_MARKER)
    if os.path.isfile(marker):
        try:
            previous = json.load(open(marker))
        except (OSError, ValueError):
            previous = None
        if previous == run_marker(model_args, data_args):
            return
    raise UsageError(
        f"--output_dir {out!r} already holds another run; pass --overwrite_output_dir to replace it, "
        "--resume_from_checkpoint to continue it, or choose another folder"
    )


def run_marker(model_args, data_args) -> dict[str, Any]:
    return {"model_name_or_path": model_args.model_name_or_path, "objective": model_args.objective, "train_file": data_args.train_file}


def check_arguments(model_args, data_args, objective_cls: type[Objective], objective_args, training_args, argv=None) -> None:
    """Every start-up check that needs no model: flag ranges, the objective's data needs, resume, output_dir."""
    if training_args.nan_policy not in ("stop", "skip"):
        raise UsageError(f"--nan_policy must be stop or skip, got {training_args.nan_policy!r}")
    if training_args.nan_check not in NAN_CHECKS:
        raise UsageError(f"--nan_check must be one of {', '.join(NAN_CHECKS)}, got {training_args.nan_check!r}")
    if training_args.nan_check == "deferred" and (str(getattr(training_args.optim, "value", training_args.optim)) != "adamw_torch_fused"
                                                  or training_args.fp16):
        raise UsageError("--nan_check deferred needs --optim adamw_torch_fused (the default: its fused step skips a bad "
                         "update on the device) and no --fp16 (its loss scaler decides itself); use --nan_check every_step")
    if model_args.packed_attention not in ATTENTION_LAYOUTS:
        raise UsageError(f"--packed_attention must be one of {', '.join(ATTENTION_LAYOUTS)}, got {model_args.packed_attention!r}")
    if model_args.packed_attention != "auto" and not model_args.packed_linear:
        raise UsageError(f"--packed_attention {model_args.packed_attention} applies to the packed layers, which "
                         "--no_packed_linear turns off; drop one of the two")
    if model_args.prune_last_layer and not model_args.packed_linear:
        raise UsageError("--prune_last_layer applies to the packed layers, which --no_packed_linear turns off; drop one of the two")
    if training_args.logging_nan_inf_filter:
        raise UsageError("--logging_nan_inf_filter would change nothing here (and cost two host syncs per step): the "
                         "logged loss and train_loss already leave out the updates --nan_policy drops; drop the flag")
    if not (math.isfinite(model_args.temp) and model_args.temp > 0):
        raise UsageError(f"--temp must be a positive number (SimCSE: 0.05), got {model_args.temp}")
    if not math.isfinite(model_args.hard_negative_weight):
        raise UsageError(f"--hard_negative_weight must be finite, got {model_args.hard_negative_weight}")
    if data_args.preprocessing_num_workers is not None and data_args.preprocessing_num_workers < 1:
        raise UsageError(f"--preprocessing_num_workers must be >= 1 (processes that tokenize the corpus), got {data_args.preprocessing_num_workers}")
    if data_args.max_seq_length < 1:
        raise UsageError(f"--max_seq_length must be at least 1 token plus the special tokens, got {data_args.max_seq_length}")
    if training_args.per_device_train_batch_size < 1:
        raise UsageError(f"--per_device_train_batch_size must be >= 1, got {training_args.per_device_train_batch_size}")
    if training_args.gradient_accumulation_steps < 1:
        raise UsageError(f"--gradient_accumulation_steps must be >= 1, got {training_args.gradient_accumulation_steps}")
    if training_args.max_consecutive_skips < 0:
        raise UsageError(f"--max_consecutive_skips must be >= 0 (0: no limit), got {training_args.max_consecutive_skips}")
    if training_args.mini_batch_size is not None:
        if training_args.mini_batch_size < 1:
            raise UsageError(f"--mini_batch_size must be >= 1 (sentences per encoder chunk), got {training_args.mini_batch_size}")
        if getattr(training_args, "gradient_checkpointing", False):
            raise UsageError("--mini_batch_size and --gradient_checkpointing both recompute the forward: use one of them")
    if training_args.ddp_gradient not in DDP_GRADIENTS:
        raise UsageError(f"--ddp_gradient must be exact or original, got {training_args.ddp_gradient!r}")
    if training_args.n_gpu > 1:  # several visible GPUs in one process: HF would use nn.DataParallel
        raise UsageError(data_parallel_message(training_args.n_gpu, list(sys.argv[1:] if argv is None else argv)))
    objective_cls.check_data_arguments(data_args, objective_args)  # e.g. DiffCSE refuses --pad_to_max_length
    if training_args.do_train and not data_args.train_file:
        raise UsageError("--train_file is required with --do_train")
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts and not training_args.resume_from_checkpoint:
        # torchrun --max-restarts restarted the group after a worker died: go on from the latest complete
        # checkpoint instead of training again from scratch over it.
        logger.warning("torchrun restart %d of this run: resuming from the latest complete checkpoint of %s "
                       "(--resume_from_checkpoint auto)", restarts, training_args.output_dir)
        training_args.resume_from_checkpoint = RESUME_AUTO
    if training_args.resume_from_checkpoint:
        # `auto`: the latest complete checkpoint of output_dir (none: a fresh start); a path must be complete.
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args, model_args, data_args)


def check_last_batch(objective_cls: type[Objective], num_examples: int, training_args) -> None:
    """Refuse at start-up a run with a global batch too small for the objective (a contrastive loss over one
    sentence is exactly 0: no negative), also its last batch, instead of training on it or failing at the end
    of the first epoch."""
    needed = objective_cls.min_global_batch_size
    global_batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    if num_examples < needed:
        raise UsageError(f"the training corpus holds {num_examples} sentence(s), but --objective {objective_cls.name} needs "
                         f"at least {needed} in a batch (the other sentences are the negatives)")
    if global_batch < needed:
        raise UsageError(f"the global batch is {global_batch} sentence(s) (--per_device_train_batch_size x processes), but "
                         f"--objective {objective_cls.name} needs at least {needed} (the other sentences are the negatives)")
    last = num_examples % global_batch
    if not training_args.dataloader_drop_last and 0 < last < needed:
        raise UsageError(
            f"the last batch of each epoch would hold {last} sentence(s) ({num_examples} examples, global batch "
            f"{global_batch}), but --objective {objective_cls.name} needs at least {needed} sentences in a batch: pass --dataloader_drop_last "
            "or change --per_device_train_batch_size"
        )


# ---- parts -------------------------------------------------------------------------------------------
def build_encoder(model_args, data_args, objective_args=None, prompt_args=None) -> SentenceEncoder:
    """The encoder the flags describe: backbone, pooler (prompt settings included), projector, packing."""
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a Hugging Face encoder folder or hub name)")
    objective_cls = get_objective_class(model_args.objective)
    prompt_args = enable_prompt(model_args, prompt_args)  # --mask_embedding_sentence: pooler_type -> mask
    if model_args.prune_last_layer and not get_pooler(model_args.pooler_type).reads_one_token:
        raise UsageError(f"--prune_last_layer applies to poolers that read one token of the last layer (cls, "
                         f"cls_before_pooler, mask); --pooler_type {model_args.pooler_type} reads every token: drop the flag")
    required = objective_cls.required_projector(objective_args)
    config = EncoderConfig(
        pooler_type=model_args.pooler_type,
        first_layer_index=model_args.first_layer_index,
        projector=resolve_projector(model_args.projector, model_args.pooler_type, *(required or (None,))),
        mlp_only_train=model_args.mlp_only_train,
        objective=model_args.objective,
    )
    encoder = SentenceEncoder.from_backbone(
        model_args.model_name_or_path, config, tokenizer_name=model_args.tokenizer_name, dropout_prob=model_args.dropout_prob,
        trust_pickle=model_args.trust_pickle, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
        config_name=model_args.config_name, use_fast_tokenizer=model_args.use_fast_tokenizer,
    )
    limit = max_positions(encoder.backbone.config, encoder.tokenizer)
    if data_args.max_seq_length > limit:
        raise UsageError(f"--max_seq_length {data_args.max_seq_length} exceeds the model's limit of {limit} tokens")
    specials = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    if encoder.config.pooler_type != "mask" and data_args.max_seq_length <= specials:
        raise UsageError(f"--max_seq_length {data_args.max_seq_length} leaves no room for a word after the tokenizer's "
                         f"{specials} special tokens; use at least {specials + 1} (SimCSE: 32)")
    vocab = getattr(encoder.backbone.config, "vocab_size", None)
    if vocab and len(encoder.tokenizer) < vocab // 2:
        raise UsageError(
            f"the tokenizer of {model_args.tokenizer_name or model_args.model_name_or_path!r} has {len(encoder.tokenizer)} tokens "
            f"but the model's vocabulary {vocab}: its tokenizer files are missing or belong to another model "
            "(add them to the folder, or pass --tokenizer_name)"
        )
    if model_args.fast_dropout:  # the cheaper CPU dropout mask (modeling/dropout.py)
        use_cpu_dropout(encoder.backbone)
    if model_args.fast_linear:  # oneDNN's products for the CPU linear layers (modeling/cpu_linear.py)
        use_fast_linears(encoder.backbone)
    if model_args.packed_linear:  # non-pad tokens only through the linear layers (modeling/packing.py)
        enable_packed_linear(encoder.backbone, attention=model_args.packed_attention,
                             prune_last_layer=model_args.prune_last_layer is not False)
    if prompt_args is not None:
        attach_prompt(encoder, prompt_args, data_args.max_seq_length)  # template tokens + max_seq_length must fit
    encoder.pooling.check(encoder, data_args.max_seq_length)
    return encoder


def eval_sts_sets(items: list[str] | None) -> dict[str, str]:
    """--eval_sts NAME=PATH ... -> {NAME: PATH}; a malformed, reserved or repeated name stops the run naming it."""
    try:
        return sts_files.named_locations(items, "--eval_sts", reserved=RESERVED_DEV_NAMES, reserved_why="a built-in dev set's name")
    except ValueError as err:
        raise UsageError(str(err)) from None


RESERVED_DEV_NAMES = {"stsb", "sickr", "korsts", "avg", "avg_sts", "alignment", "uniformity", "avg_transfer"}


def build_dev_evaluator(data_args, training_args) -> SentEvalDevEvaluator | None:
    needs_eval = training_args.eval_strategy != "no" or training_args.do_eval
    if not needs_eval:
        idle = [flag for flag, given in (("--eval_sts", training_args.eval_sts), ("--eval_korsts", training_args.eval_korsts),
                                         ("--eval_sts_columns", training_args.eval_sts_columns is not None),
                                         ("--eval_transfer", training_args.eval_transfer),
                                         ("--eval_align_uniform", training_args.eval_align_uniform)) if given]
        if idle:  # they would do nothing: no evaluation runs
            raise UsageError(f"{', '.join(idle)} evaluate{'s' if len(idle) == 1 else ''} during training, but no evaluation "
                             "runs: add --eval_strategy steps --eval_steps N (or --do_eval), or drop "
                             f"{'it' if len(idle) == 1 else 'them'}")
        return None
    korsts_dir = data_args.korsts_dir if training_args.eval_korsts else None
    if training_args.eval_korsts and not korsts_dir:
        raise UsageError("--eval_korsts needs --korsts_dir (the folder with KorSTS sts-dev.tsv)")
    sts_sets = eval_sts_sets(training_args.eval_sts)
    try:
        sts_columns = sts_files.parse_columns(training_args.eval_sts_columns)
    except ValueError as err:
        raise UsageError(f"--eval_sts_columns: {err}") from None
    if training_args.eval_sts_columns is not None and not sts_sets:
        raise UsageError("--eval_sts_columns describes the --eval_sts sets, but none is given; add --eval_sts NAME=PATH or drop it")
    english = training_args.eval_english_sts
    if english is None:
        english = not training_args.eval_korsts  # a Korean run selects on KorSTS dev alone
    if not english and not training_args.eval_korsts and not sts_sets:
        raise UsageError("--no_eval_english_sts leaves nothing to evaluate: add --eval_korsts --korsts_dir DIR or "
                         "--eval_sts NAME=PATH, or drop it")
    for flag, wanted in (("--eval_transfer", training_args.eval_transfer), ("--eval_align_uniform", training_args.eval_align_uniform)):
        if wanted and not english:
            raise UsageError(f"{flag} evaluates the English dev sets, which are off (--eval_korsts without --eval_english_sts); "
                             "add --eval_english_sts or drop the flag")
    evaluator = SentEvalDevEvaluator(
        data_dir=data_args.eval_data_dir if english else None, transfer=training_args.eval_transfer, korsts_dir=korsts_dir,
        align_uniform=training_args.eval_align_uniform, english=english, sts_sets=sts_sets, sts_columns=sts_columns,
    )
    metric = training_args.metric_for_best_model
    if metric is not None:  # HF would raise only at the first evaluation that selects (KeyError), hours in
        name = metric[len("eval_"):] if metric.startswith("eval_") else metric
        if name not in evaluator.metric_names:
            raise UsageError(
                f"--metric_for_best_model {metric} is not a metric of this run's dev evaluation (one of: "
                f"{', '.join(evaluator.metric_names)}); choose one of them"
                + ("" if english else ", or add --eval_english_sts for the English ones")
            )
    return evaluator


@dataclass
class Run:
    """Everything a training run is made of."""

    model_args: ModelArguments
    data_args: DataTrainingArguments
    training_args: ContrastiveTrainingArguments
    objective_args: Any
    encoder: SentenceEncoder
    objective: Objective
    model: ContrastiveModel
    train_dataset: Any
    collator: Callable
    dev_evaluator: SentEvalDevEvaluator | None
    trainer: ContrastiveTrainer
    run_config: dict[str, Any] = field(default_factory=dict)


def build_run(argv: list[str] | None = None, *, parsed: tuple | None = None, sentences: list[str] | None = None,
              objective_kwargs: dict | None = None, wrap_collator: Callable[[Callable], Callable] | None = None,
              callbacks: list[TrainerCallback] | None = None, output_lock: OutputDirLock | None = None) -> Run:
    """Parse and check the flags, then build encoder, objective, data, dev evaluator and trainer.

    parsed: parse_args(argv)'s result, when the caller looked at the flags first (train.py sets up logging).
    sentences: in-memory training sentences (one view pair each) instead of --train_file.
    objective_kwargs: extra keyword arguments of the objective's constructor.
    wrap_collator: called with the collator, returns the one the trainer uses (e.g. a recorder).
    callbacks: added to the trainer's (after early stopping).
    output_lock: acquired right after the start-up checks, before anything reads the output folder's runs
    (train.py's one-run-per-folder lock; the caller releases it)."""
    model_args, data_args, by_class, training_args = parsed if parsed is not None else parse_args(argv)
    if model_args.objective not in objective_names():
        raise UsageError(unknown_objective_message(model_args.objective))
    objective_cls = get_objective_class(model_args.objective)
    objective_args = by_class.get(objective_cls.arguments_class) if objective_cls.arguments_class else None
    if output_lock is not None:
        output_lock.acquire()
    check_arguments(model_args, data_args, objective_cls, objective_args, training_args, argv)
    configure_tf32(training_args.tf32)  # TF32 matmuls on Ampere+ unless --tf32 false; losses stay fp32
    if training_args.ddp_find_unused_parameters is None:
        # Every trainable parameter takes part in every training forward (the frozen DiffCSE generator has no
        # gradient), so DDP need not search the graph for unused ones each step (HF's default for a non-HF model
        # is True); --ddp_find_unused_parameters true restores it.
        training_args.ddp_find_unused_parameters = False

    if not model_args.onednn_primitive_cache:  # before the first oneDNN call: lower peak RSS (modeling/cpu_linear.py)
        limit_onednn_primitive_cache()
    elif os.environ.get(ONEDNN_CACHE_VARIABLE) is not None:  # the flag asks for oneDNN's default; the variable decides
        logger.warning("--onednn_primitive_cache: %s=%s is set in the environment, and oneDNN follows it (unset it for "
                       "oneDNN's default cache)", ONEDNN_CACHE_VARIABLE, os.environ[ONEDNN_CACHE_VARIABLE])
    set_seed(training_args.seed)
    encoder = build_encoder(model_args, data_args, objective_args, by_class.get(PromptArguments))
    objective = objective_cls(model_args, objective_args, encoder, **(objective_kwargs or {}))
    mlm_args = by_class.get(MaskedLMArguments) or MaskedLMArguments()
    unused = mlm_args.given_without_do_mlm()
    if unused:
        raise UsageError(f"{', '.join(unused)} only apply with --do_mlm (SimCSE's auxiliary MLM); add --do_mlm or drop them")
    masked_lm = None
    if mlm_args.do_mlm:
        if mlm_args.mlm_clone_inputs is None:  # as the objective's original code (recorded resolved in the run config)
            mlm_args.mlm_clone_inputs = objective_cls.mlm_clones_inputs
        masked_lm = build_masked_lm(mlm_args, model_args.model_name_or_path, len(encoder.tokenizer), cache_dir=model_args.cache_dir,
                                    revision=model_args.model_revision, use_safetensors=None if model_args.trust_pickle else True)
    model = ContrastiveModel(encoder, objective, scale_local_grad=training_args.ddp_gradient == "exact", masked_lm=masked_lm,
                             mini_batch_size=training_args.mini_batch_size)

    views_function = encoder.pooling.training_tokenize_function(encoder, data_args.max_seq_length)
    train_dataset, num_views = None, 2
    if sentences is not None or data_args.train_file:
        with training_args.main_process_first(desc="corpus loading and tokenization"):
            corpus = Dataset.from_dict({"sent0": list(sentences)}) if sentences is not None else \
                load_corpus(data_args.train_file, data_args.sentence_columns, model_args.cache_dir)
            num_views = 3 if "hard_neg" in corpus.column_names else 2
            train_dataset = tokenize_corpus(corpus, encoder.tokenizer, data_args.max_seq_length, data_args.preprocessing_num_workers,
                                            data_args.overwrite_cache, views_function=views_function)
        logger.info("training corpus: %s (%d examples, %d views each)", data_args.train_file or "in memory", len(train_dataset), num_views)
        check_last_batch(objective_cls, len(train_dataset), training_args)
        if model_args.hard_negative_weight and num_views < 3 and not objective_cls.uses_hard_negative_weight_without_data(objective_args):
            raise UsageError(
                f"--hard_negative_weight {model_args.hard_negative_weight} applies to a hard-negative column, which "
                f"{data_args.train_file or 'the corpus'} does not have (1-2 sentence columns); drop the flag or give 3-column data"
            )
    collator = ContrastiveCollator(
        pad_token_id=encoder.tokenizer.pad_token_id,
        num_views=num_views,
        max_length=data_args.max_seq_length if data_args.pad_to_max_length else None,
        batch_transform=objective.batch_transform(encoder.tokenizer),
        sentence_keys=model_args.mask_duplicates,
        packing_layout=is_packed(encoder.backbone),
        pad_to_multiple_of=8 if (training_args.device.type == "cuda" and not data_args.pad_to_max_length
                                 and objective.padding_invariant()) else None,
        extra_transforms=(() if masked_lm is None else (MLMBatchMasking.from_tokenizer(
            encoder.tokenizer, mlm_args.mlm_probability, mlm_args.mlm_clone_inputs, seed=training_args.seed),)),
    )
    dev_evaluator = build_dev_evaluator(data_args, training_args)
    run_config = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "objective_args": dataclasses.asdict(objective_args) if objective_args is not None else {},
        "masked_lm": dataclasses.asdict(mlm_args),
        # what produced the run (versions, device, processes, commit, command line, training file hash)
        "environment": environment_record(list(sys.argv[1:] if argv is None else argv), data_args.train_file,
                                          training_args.device, training_args.world_size),
    }
    trainer_callbacks = [EarlyStoppingCallback(early_stopping_patience=training_args.early_stop)] if training_args.early_stop else []
    if train_dataset is not None:  # a text corpus's token files: their read pages released after every step
        trainer_callbacks.append(ReleaseReadPages(c["filename"] for c in train_dataset.cache_files))
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=dev_evaluator,  # the SentEval dev sentences; evaluate() scores them (training/dev_evaluator.py)
        data_collator=wrap_collator(collator) if wrap_collator is not None else collator,
        processing_class=encoder.tokenizer,
        callbacks=trainer_callbacks + list(callbacks or []),
        run_config=run_config,
    )
    return Run(model_args, data_args, training_args, objective_args, encoder, objective, model, train_dataset, collator,
               dev_evaluator, trainer, run_config)
