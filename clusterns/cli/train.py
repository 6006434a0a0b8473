"""The training entry point behind train.py (and the `clusterns-train` console script)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import transformers
from transformers import EarlyStoppingCallback, HfArgumentParser, set_seed

from clusterns.training.arguments import ContrastiveTrainingArguments, DataTrainingArguments, ModelArguments, normalise_argv
from clusterns.training.checkpoints import resolve_resume_checkpoint
from clusterns.training.data import ContrastiveCollator, CorpusError, load_corpus, tokenize_corpus
from clusterns.training.distributed import data_parallel_message
from clusterns.modeling.encoder import CONFIG_NAME, EncoderConfig, SentenceEncoder, max_positions
from clusterns.training.model import ContrastiveModel
from clusterns.objectives import get_objective_class, objective_argument_classes, objective_names
from clusterns.precision import auto_mixed_precision_flag, configure_tf32
from clusterns.modeling.projectors import resolve_projector
from clusterns.modeling.prompts import PromptArguments, attach_prompt, enable_prompt, get_spec, prompt_projector

logger = logging.getLogger("clusterns")

RUN_MARKER = "run_args.json"  # what produced an output_dir, to refuse mixing two runs in one folder


class UsageError(SystemExit):
    """A bad flag or input: printed as one line, exit code 2, no traceback."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


def parse_args(argv: list[str] | None = None):
    argv = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    # SimCSE (HF 4.2.1) saved at every evaluation when selecting the best model; `best` keeps that
    # meaning without writing a checkpoint that is not an improvement.
    if any(a.split("=")[0] == "--load_best_model_at_end" for a in argv) and not any(a.split("=")[0] == "--save_strategy" for a in argv):
        argv += ["--save_strategy", "best"]
    extra_classes = [*objective_argument_classes(), PromptArguments]
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, *extra_classes, ContrastiveTrainingArguments))
    parsed = parser.parse_args_into_dataclasses(args=argv)
    model_args, data_args, *objective_args, training_args = parsed
    if training_args.auto_mixed_precision:
        flag = auto_mixed_precision_flag(training_args.fp16, training_args.bf16, training_args.use_cpu)
        if flag:  # parse again: TrainingArguments sets up its mixed precision while it is built
            logger.info("mixed precision on by default on this GPU: %s (--auto_mixed_precision false for fp32)", flag)
            model_args, data_args, *objective_args, training_args = parser.parse_args_into_dataclasses(args=[*argv, flag])
    by_class = {type(a): a for a in objective_args}
    return model_args, data_args, by_class, training_args


def check_output_dir(training_args, model_args, data_args) -> None:
    out = training_args.output_dir
    if not os.path.isdir(out) or not os.listdir(out) or training_args.overwrite_output_dir:
        return
    if training_args.resume_from_checkpoint:
        return
    marker = os.path.join(out, RUN_MARKER)
    current = {"model_name_or_path": model_args.model_name_or_path, "objective": model_args.objective, "train_file": data_args.train_file}
    if os.path.isfile(marker):
        try:
            previous = json.load(open(marker))
        except (OSError, ValueError):
            previous = None
        if previous == current:
            return
    raise UsageError(
        f"--output_dir {out!r} already holds another run; pass --overwrite_output_dir to replace it, "
        "--resume_from_checkpoint to continue it, or choose another folder"
    )


def build_encoder(model_args, data_args, objective_args, prompt_args=None) -> SentenceEncoder:
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a BERT or RoBERTa checkpoint folder or hub name)")
    batchnorm = bool(getattr(objective_args, "batchnorm", False))
    prompt_args = enable_prompt(model_args, prompt_args)  # --mask_embedding_sentence: pooler_type -> mask
    config = EncoderConfig(
        pooler_type=model_args.pooler_type,
        first_layer_index=model_args.first_layer_index,
        projector=prompt_projector(model_args.projector) if prompt_args else resolve_projector(model_args.projector, model_args.pooler_type, batchnorm),
        mlp_only_train=model_args.mlp_only_train,
        objective=model_args.objective,
    )
    encoder = SentenceEncoder.from_backbone(
        model_args.model_name_or_path, config, tokenizer_name=model_args.tokenizer_name, dropout_prob=model_args.dropout_prob,
        trust_pickle=model_args.trust_pickle, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
    )
    limit = max_positions(encoder.backbone.config, encoder.tokenizer)
    if data_args.max_seq_length > limit:
        raise UsageError(f"--max_seq_length {data_args.max_seq_length} exceeds the model's limit of {limit} tokens")
    if getattr(model_args, "packed_linear", False):  # non-pad tokens only through the linear layers (packing.py)
        from clusterns.modeling.packing import enable_packed_linear

        enable_packed_linear(encoder.backbone)
    if prompt_args is not None:
        attach_prompt(encoder, prompt_args, data_args.max_seq_length)  # template tokens + max_seq_length must fit
    return encoder


def build_dev_evaluator(data_args, training_args):
    needs_eval = training_args.eval_strategy != "no" or training_args.do_eval
    if not needs_eval:
        return None
    from clusterns.training.dev_evaluator import SentEvalDevEvaluator

    korsts_dir = data_args.korsts_dir if training_args.eval_korsts else None
    if training_args.eval_korsts and not korsts_dir:
        raise UsageError("--eval_korsts needs --korsts_dir (the folder with KorSTS sts-dev.tsv)")
    return SentEvalDevEvaluator(
        data_dir=data_args.eval_data_dir, transfer=training_args.eval_transfer, korsts_dir=korsts_dir,
        align_uniform=training_args.eval_align_uniform,
    )


def train_main(argv: list[str] | None = None) -> dict:
    try:
        return _train(argv)
    except UsageError as err:
        print(f"error: {err.message}", file=sys.stderr)
        raise
    except (CorpusError, FileNotFoundError, ValueError) as err:
        if os.environ.get("CLUSTERNS_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _train(argv: list[str] | None) -> dict:
    model_args, data_args, objective_args_by_class, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO if training_args.should_log else logging.WARN)
    transformers.utils.logging.set_verbosity_warning() if training_args.should_log else transformers.utils.logging.set_verbosity_error()

    if model_args.objective not in objective_names():
        raise UsageError(f"--objective {model_args.objective!r} is not known; choose one of: {', '.join(objective_names())}")
    if training_args.nan_policy not in ("stop", "skip"):
        raise UsageError(f"--nan_policy must be stop or skip, got {training_args.nan_policy!r}")
    if training_args.n_gpu > 1:  # several visible GPUs in one process: HF would use nn.DataParallel
        raise UsageError(data_parallel_message(training_args.n_gpu, list(sys.argv[1:] if argv is None else argv)))
    configure_tf32(training_args.tf32)  # TF32 matmuls on Ampere+ unless --tf32 false; losses stay fp32
    if training_args.ddp_find_unused_parameters is None:
        # Every trainable parameter takes part in every training forward (the frozen DiffCSE generator has no
        # gradient), so DDP need not search the graph for unused ones each step (HF's default for a non-HF model
        # is True); --ddp_find_unused_parameters true restores it.
        training_args.ddp_find_unused_parameters = False
    objective_cls = get_objective_class(model_args.objective)
    check_data = getattr(objective_cls, "check_data_arguments", None)
    if check_data is not None:
        check_data(data_args)  # e.g. DiffCSE refuses --pad_to_max_length (the original silently lost the RTD loss)
    objective_args = objective_args_by_class.get(objective_cls.arguments_class) if objective_cls.arguments_class else None
    if training_args.do_train and not data_args.train_file:
        raise UsageError("--train_file is required with --do_train")
    if training_args.resume_from_checkpoint:
        # `auto`: the latest complete checkpoint of output_dir (none: a fresh start); a path must be complete.
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args, model_args, data_args)

    set_seed(training_args.seed)
    encoder = build_encoder(model_args, data_args, objective_args, objective_args_by_class.get(PromptArguments))
    objective = objective_cls(model_args, objective_args, encoder)
    model = ContrastiveModel(encoder, objective)

    train_dataset = None
    num_views = 2
    if data_args.train_file:
        with training_args.main_process_first(desc="corpus loading and tokenization"):
            corpus = load_corpus(data_args.train_file, data_args.sentence_columns, model_args.cache_dir)
            num_views = 3 if "hard_neg" in corpus.column_names else 2
            train_dataset = tokenize_corpus(
                corpus, encoder.tokenizer, data_args.max_seq_length, data_args.preprocessing_num_workers, data_args.overwrite_cache,
                prompt=get_spec(encoder) if encoder.config.prompt else None,
            )
        logger.info("training corpus: %s (%d examples, %d views each)", data_args.train_file, len(train_dataset), num_views)
        check_last_batch(objective_cls, len(train_dataset), training_args)
    collator = ContrastiveCollator(
        pad_token_id=encoder.tokenizer.pad_token_id,
        num_views=num_views,
        max_length=data_args.max_seq_length if data_args.pad_to_max_length else None,
        batch_transform=objective.batch_transform(encoder.tokenizer),
    )
    dev_evaluator = build_dev_evaluator(data_args, training_args)
    run_config = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "objective_args": dataclasses.asdict(objective_args) if objective_args is not None else {},
    }
    from clusterns.training.trainer import ContrastiveTrainer

    callbacks = [EarlyStoppingCallback(early_stopping_patience=training_args.early_stop)] if training_args.early_stop else []
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        # evaluate() reads the SentEval dev sets itself; the Trainer only needs to know evaluation is wanted.
        eval_dataset=["senteval-dev"] if dev_evaluator is not None else None,
        data_collator=collator,
        processing_class=encoder.tokenizer,
        callbacks=callbacks,
        dev_evaluator=dev_evaluator,
        run_config=run_config,
    )
    results: dict = {}
    if training_args.do_train or train_dataset is not None:
        if trainer.is_world_process_zero():
            os.makedirs(training_args.output_dir, exist_ok=True)
            with open(os.path.join(training_args.output_dir, RUN_MARKER), "w") as f:
                json.dump({"model_name_or_path": model_args.model_name_or_path, "objective": model_args.objective, "train_file": data_args.train_file}, f)
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the best model when --load_best_model_at_end
        results.update(train_result.metrics)
        if trainer.is_world_process_zero():
            write_results(os.path.join(training_args.output_dir, "train_results.txt"), train_result.metrics)
            trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
            logger.info("model saved to %s (load it with SentenceEncoder.from_pretrained or AutoModel.from_pretrained)", training_args.output_dir)
    if training_args.do_eval and dev_evaluator is not None:
        metrics = trainer.evaluate()
        results.update(metrics)
        if trainer.is_world_process_zero():
            write_results(os.path.join(training_args.output_dir, "eval_results.txt"), metrics)
    if trainer.is_world_process_zero() and (training_args.do_train or train_dataset is not None):
        from clusterns.export.model_card import write_model_card  # README.md: base model, objective, hyper-parameters, data, dev numbers

        try:
            write_model_card(training_args.output_dir, {**run_config, "training": training_args.to_dict(), "world_size": training_args.world_size}, results)
        except Exception as err:  # the trained model is saved; a card problem must not fail the run
            logger.warning("could not write the model card: %s", err)
    return results


def train_cli() -> None:
    """`clusterns-train`: train_main without handing its metrics dict to sys.exit (which would print it, exit 1)."""
    train_main()


def evaluate_main() -> None:
    """`clusterns-evaluate`: run the checkout's evaluation.py (it is not packaged; works for `pip install -e .`)."""
    import runpy

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "evaluation.py")
    if not os.path.isfile(script):
        print("error: clusterns-evaluate needs the repository checkout (pip install -e .); run evaluation.py from it", file=sys.stderr)
        raise SystemExit(2)
    sys.argv[0] = script
    runpy.run_path(script, run_name="__main__")


def check_last_batch(objective_cls, num_examples: int, training_args) -> None:
    """Refuse at start-up a run whose last global batch is too small for the objective (MixCSE needs 2),
    instead of failing at the end of the first epoch."""
    needed = getattr(objective_cls, "min_global_batch_size", 1)
    global_batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    last = num_examples % global_batch
    if not training_args.dataloader_drop_last and 0 < last < needed:
        raise UsageError(
            f"the last batch of each epoch would hold {last} sentence(s) ({num_examples} examples, global batch "
            f"{global_batch}), but --objective {objective_cls.name} needs at least {needed} sentences in a batch: pass --dataloader_drop_last "
            "or change --per_device_train_batch_size"
        )


def write_results(path: str, metrics: dict) -> None:
    with open(path, "w") as f:
        for key in sorted(metrics):
            f.write(f"{key} = {metrics[key]}\n")
