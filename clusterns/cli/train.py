"""train.py and `clusterns-train`: build the run (training/run.py), train, save, evaluate, write the model card."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import transformers

from clusterns.export.model_card import write_model_card
from clusterns.training.arguments import UsageError
from clusterns.io import atomic_write_text
from clusterns.training.checkpoints import CheckpointWriteError, describe_write_error
from clusterns.training.data import CorpusError
from clusterns.training.distributed import init_restarted_process_group
from clusterns.training.nan_guard import NonFiniteLossError, NonFiniteWeightsError
from clusterns.training.argv import without_flag
from clusterns.training.run import RUN_MARKER, build_run, fp16_without_gpu, parse_args, run_marker
from clusterns.training.output_storage import check_output_storage
from clusterns.training.run_lock import OutputDirLock, OutputDirLockedError

logger = logging.getLogger("clusterns")


def train_main(argv: list[str] | None = None) -> dict:
    try:
        return _train(argv)
    except UsageError as err:
        print(f"error: {err.message}", file=sys.stderr)
        raise
    except (CorpusError, FileNotFoundError, ValueError, OutputDirLockedError) as err:
        if os.environ.get("CLUSTERNS_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _train(argv: list[str] | None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    init_restarted_process_group(argv)  # a torchrun restart: the process group under fresh store keys
    parsed = parse_args(argv)
    if fp16_without_gpu(parsed[-1]):
        # SimCSE's command lines pass --fp16; without a GPU there is no fp16 autocast (HF would stop): say so, go on
        # in fp32 (TrainingArguments sets its mixed precision up while it is built, hence the second parse).
        logger.warning("--fp16 needs a CUDA GPU and this run has none: training runs in fp32 on the CPU (--bf16 is "
                       "the CPU's mixed precision)")
        argv = without_flag(argv, "fp16")
        parsed = parse_args(argv)
    training_args = parsed[-1]
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO if training_args.should_log else logging.WARN)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    # One run per output folder, taken once the flags are checked and held until this function returns (or the
    # process dies): training/run_lock.py.
    # Multi-node: the output folder must be shared unless --save_on_each_node (training/output_storage.py).
    check_output_storage(training_args.output_dir, training_args.save_on_each_node)
    # The lock is held by whoever writes the folder: the global rank 0, or each node's local rank 0 with
    # --save_on_each_node (HF's should_save).
    lock = OutputDirLock(training_args.output_dir, enabled=training_args.should_save)
    try:
        return _run(argv, parsed, lock)
    finally:
        lock.release()


def _run(argv: list[str] | None, parsed: tuple, lock: OutputDirLock) -> dict:
    training_args = parsed[-1]
    run = build_run(argv, parsed=parsed, output_lock=lock)
    trainer, model_args, data_args = run.trainer, run.model_args, run.data_args

    results: dict = {}
    trained = training_args.do_train or run.train_dataset is not None
    if trained:
        if training_args.should_save:
            os.makedirs(training_args.output_dir, exist_ok=True)
            with open(os.path.join(training_args.output_dir, RUN_MARKER), "w") as f:
                json.dump(run_marker(model_args, data_args), f)
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the best model when --load_best_model_at_end
        results.update(train_result.metrics)
        if training_args.should_save:
            write_results(os.path.join(training_args.output_dir, "train_results.txt"), train_result.metrics)
            write_state(trainer.state, os.path.join(training_args.output_dir, "trainer_state.json"))
            logger.info("model saved to %s (load it with SentenceEncoder.from_pretrained or AutoModel.from_pretrained)", training_args.output_dir)
    if training_args.do_eval and run.dev_evaluator is not None:
        metrics = trainer.evaluate()
        results.update(metrics)
        if training_args.should_save:
            write_results(os.path.join(training_args.output_dir, "eval_results.txt"), metrics)
    if training_args.should_save and trained:
        record = {**run.run_config, "training": training_args.to_dict(), "world_size": training_args.world_size}
        try:  # README.md: base model, objective, hyper-parameters, data, dev numbers (the model folder is written)
            write_model_card(training_args.output_dir, record, results)
        except Exception as err:  # the trained model is saved; a card problem must not fail the run
            logger.warning("could not write the model card: %s", err)
    return results


# Failures of a run that started correctly (a diverged run, broken weights, a full disk): one line, exit code 1.
RUN_FAILURES = (NonFiniteLossError, NonFiniteWeightsError, CheckpointWriteError)


def train_cli(argv: list[str] | None = None) -> None:
    """`clusterns-train` and train.py: train_main, with a run failure reported in one line (exit code 1) instead of
    a traceback (CLUSTERNS_DEBUG=1 shows it), and without handing the metrics dict to sys.exit."""
    try:
        train_main(argv)
    except RUN_FAILURES as err:
        if os.environ.get("CLUSTERNS_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def write_results(path: str, metrics: dict) -> None:
    """`key = value` lines, written atomically (a full disk leaves the previous file, not a truncated one)."""
    _atomic(path, "".join(f"{key} = {metrics[key]}\n" for key in sorted(metrics)))


def write_state(state, path: str) -> None:
    """TrainerState.save_to_json's content, written atomically."""
    _atomic(path, json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n")


def _atomic(path: str, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as err:
        folder = os.path.dirname(path)
        raise describe_write_error(err, os.path.basename(path), folder) from err
