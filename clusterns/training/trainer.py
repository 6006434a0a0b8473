"""ContrastiveTrainer: a thin transformers.Trainer subclass.

What it changes: the loss comes from the objective (with its scalar logs averaged over each
logging window), evaluation is SentEval on the dev sets through `SentenceEncoder.encode`
(never through the objective), and checkpoints are encoder folders that plain
`AutoModel.from_pretrained` loads, with the objective's state beside them in safetensors.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
from transformers import EarlyStoppingCallback, Trainer, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

try:
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:  # transformers 4.x: Trainer._rotate_checkpoints
    rotate_checkpoints = None

from clusterns.export.folder import write_model_folder
from clusterns.io import MASKED_LM_STATE_NAME, OBJECTIVE_STATE_NAME, TRAINING_ARGS_NAME, save_tensors, write_json
from clusterns.training import checkpoints as ckpt
from clusterns.training.distributed import average_gradients, check_no_data_parallel, is_distributed
from clusterns.training.model import ContrastiveModel
from clusterns.training.nan_guard import (  # noqa: F401  (the errors: part of the API)
    NonFiniteGuard,
    NonFiniteLossError,
    NonFiniteWeightsError,
    check_finite,
)
from clusterns.training.sampler import use_chunked_order

logger = logging.getLogger(__name__)



# The private transformers.Trainer methods this class overrides or calls, with the parameters it relies on.
# HF offers no public hook for these (checkpoint folder layout and atomic commit, safetensors-only loading,
# the best-checkpoint bookkeeping, the gradient norm it already computed); tests/training/test_hf_contract.py
# checks each against the installed transformers, so an upgrade that changes one fails loudly.
# name: (parameters, required: False where the method is absent on a supported version and the code falls back)
HF_PRIVATE_OVERRIDES: dict[str, tuple[tuple[str, ...], bool]] = {
    "_save_checkpoint": (("self", "model", "trial"), True),  # redirected into a staging folder, committed by rename
    "_get_output_dir": (("self", "trial"), True),  # the staging root during one _save_checkpoint
    "_save": (("self", "output_dir", "state_dict"), True),  # our model folder instead of HF's weights
    "_load_from_checkpoint": (("self", "resume_from_checkpoint", "model"), True),  # safetensors encoder + objective
    "_load_best_model": (("self",), True),  # the same loader for --load_best_model_at_end
    "_determine_best_metric": (("self", "metrics", "trial"), True),  # records best_global_step on 4.x too
    "_load_callback_state": (("self",), True),  # early-stopping patience and a moved best checkpoint on resume
    "_get_grad_norm": (("self", "model", "grad_norm"), False),  # 5.x: the norm HF computed (4.x: our own norm)
    "_rotate_checkpoints": (("self", "use_mtime", "output_dir"), False),  # 4.x only (5.x: trainer_utils.rotate_checkpoints)
}


def logged_training_loss(log_history: list[dict]) -> float:
    """The mean training loss over the steps the logs cover (each logging window weighted by its steps; windows
    whose loss is not finite, i.e. only skipped steps, left out): what train_loss reports."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            window = int(entry["step"]) - last
            last = int(entry["step"])
            if math.isfinite(float(entry["loss"])) and window > 0:
                total += float(entry["loss"]) * window
                steps += window
    return total / steps if steps else float("nan")


class ContrastiveTrainer(Trainer):
    def __init__(self, *args: Any, run_config: dict | None = None, **kwargs: Any):
        """As transformers.Trainer; eval_dataset is the dev evaluator (training/dev_evaluator.py: its
        sentences, and the scoring evaluate() runs), run_config the flags recorded beside every checkpoint."""
        super().__init__(*args, **kwargs)
        # n_gpu > 1 means one process with several GPUs: HF would use nn.DataParallel, whose replicas each see
        # only their slice of the batch as negatives. Refuse, showing the torchrun command (distributed.py).
        check_no_data_parallel(self.args.n_gpu)
        self.run_config = run_config or {}
        self.nan_guard = NonFiniteGuard(self)  # --nan_policy (training/nan_guard.py)
        # checkpoints
        self._saving_checkpoint = False
        self._staging_cleaned = False
        self._loaded_best: str | None = None
        self._staging_root: str | None = None

    @property
    def contrastive_model(self) -> ContrastiveModel:
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    @property
    def skipped_steps(self) -> list[int]:
        """Steps whose update was dropped (--nan_policy skip)."""
        return self.nan_guard.skipped_steps

    @property
    def update_check_seconds(self) -> list[float]:
        """Time of each update's non-finite check (its one host sync; the benchmarks read it)."""
        return self.nan_guard.check_seconds

    # ---- loss -----------------------------------------------------------------------------------
    def get_train_dataloader(self):
        """HF's, with the shuffled order drawn as before but never held as one Python list (training/sampler.py)."""
        dataloader = super().get_train_dataloader()
        use_chunked_order(dataloader)
        # accelerate's even_batches (its default) completes the last batch of every rank from the epoch's start, so all
        # ranks hold equal batches: the model's gathers skip their size exchange. Batches dispatched from rank 0
        # (an iterable dataset) are split without that guarantee.
        self.contrastive_model.equal_rank_batches = bool(self.accelerator.even_batches) and not self.accelerator.dispatch_batches
        return dataloader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.nan_guard.before_forward(self.contrastive_model)
            # HF sets sync_gradients before each micro-batch: True on the last one of the accumulation window.
            self.contrastive_model.objective.set_accumulation_position(bool(self.accelerator.sync_gradients))
        if model.training and self._bypasses_ddp:
            # --mini_batch_size under DDP: the unwrapped model (its replayed backward accumulates each parameter's
            # gradient once per chunk, which DDP's reducer refuses); training_step averages the gradients instead.
            model = self.contrastive_model
        outputs = model(**inputs)
        loss = outputs["loss"]
        if model.training:
            # No world-size factor here: the gather scales the gradient of the global terms instead (DDP's
            # average then equals one process on the global batch; clusterns/training/distributed.py), so the
            # loss is the true loss and rank-local terms (DiffCSE's RTD) keep their single-process weight.
            self.nan_guard.record(loss, outputs["logs"])
        return (loss, outputs) if return_outputs else loss

    @property
    def _bypasses_ddp(self) -> bool:
        return self.contrastive_model.mini_batch_size is not None and is_distributed()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._bypasses_ddp and self.accelerator.sync_gradients:
            # once per optimizer step, as DDP would after the last micro-batch (before clipping and the step)
            average_gradients(self.contrastive_model.parameters())
        # HF sums what this returns into its logged loss: a non-finite loss is counted as 0 there (without a host sync,
        # unlike HF's --logging_nan_inf_filter), and log() reports the applied updates' mean instead.
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nan_guard.grad_norm = grad_norm  # the norm HF computed anyway (after the DDP all-reduce)
        return grad_norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the objective's logs averaged over the window's applied updates
            self.nan_guard.settle_pending()  # --nan_check deferred: this window's verdicts (stop raises here)
            sums, count, skipped = self.nan_guard.pop_window_logs()
            applied_loss = self.nan_guard.pop_window_loss()
            for key, total in sums.items():
                logs[key] = round((total / count).item(), 6)
            if skipped:
                logs["nonfinite/skipped"] = skipped
                # HF's sum counted the dropped updates as 0: the applied ones' mean (NaN when all were dropped)
                logs["loss"] = round(applied_loss, 4) if applied_loss is not None else float("nan")
        super().log(logs, start_time)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """SentEval dev evaluation (STS-B dev, SICK trial; transfer / KorSTS dev on request) on rank 0,
        through SentenceEncoder.encode only (never the objective).

        The other ranks wait and receive the same metrics, so every rank takes the same
        best-checkpoint and early-stopping decisions."""
        evaluator = eval_dataset if eval_dataset is not None else self.eval_dataset
        if evaluator is None:
            raise ValueError(
                "evaluation during training needs the SentEval dev data: pass --eval_data_dir pointing at the "
                "SentEval 'downstream' folder (see SentEval/data/downstream/download_dataset.sh)"
            )
        metrics: dict[str, float] | None = None
        if self.args.process_index == 0:
            encoder = self.contrastive_model.encoder
            was_training = encoder.training
            try:
                metrics = evaluator(
                    lambda sentences: encoder.encode(
                        sentences, batch_size=self.args.per_device_eval_batch_size, show_progress_bar=not self.args.disable_tqdm
                    )
                )
            finally:
                encoder.train(was_training)
            metrics = {k: float(v) for k, v in metrics.items()}
        if is_distributed():
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        metrics["epoch"] = self.state.epoch if self.state.epoch is not None else 0.0
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- checkpoints ----------------------------------------------------------------------------
    # Every checkpoint is written into tmp-checkpoint-<step>/ and renamed to checkpoint-<step> once complete
    # (clusterns/training/checkpoints.py); the final save into output_dir replaces its files one by one.
    def _determine_best_metric(self, metrics, trial):
        is_new_best = super()._determine_best_metric(metrics, trial)
        if is_new_best:  # transformers 4.x records the step only for steps/epoch saving, not for --save_strategy best
            self.state.best_global_step = self.state.global_step
        return is_new_best

    def _save_checkpoint(self, model, trial) -> None:
        """HF's _save_checkpoint (model, objective state, optimizer, scheduler, scaler, RNG states of every
        rank, trainer_state.json) redirected into a staging folder, then committed with one rename."""
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        root = ckpt.staging_root(final)
        staged = os.path.join(root, os.path.basename(final))
        if self.args.should_save:
            if not self._staging_cleaned:
                ckpt.remove_stale_staging(run_dir)
                self._staging_cleaned = True
            shutil.rmtree(root, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        error: BaseException | None = None
        self._saving_checkpoint = True
        self._staging_root = root  # _get_output_dir: HF then writes every file under root/checkpoint-<step>
        try:
            super()._save_checkpoint(model, trial)
            # This checkpoint is the best one (best_global_step: see _determine_best_metric): record its final
            # path. HF 5 recorded its staging path; HF 4.x with --save_strategy best recorded nothing.
            if self.state.best_global_step == self.state.global_step:
                self.state.best_model_checkpoint = final
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(staged, ckpt.TRAINER_STATE_NAME))
        except (NonFiniteWeightsError, *ckpt.WRITE_ERRORS) as err:  # every rank learns of it below (no deadlock)
            error = err
        finally:
            self._staging_root = None
            self._saving_checkpoint = False
        # Commit only once every rank has written its part (e.g. rng_state_<rank>.pth); the second
        # check makes the commit's outcome (and the end of the save) common to all ranks.
        if self._all_ranks_ok(error is None) and self.args.should_save:
            try:
                ckpt.commit_folder(staged, final)
                os.rmdir(root)
            except OSError as err:
                error = err
        if not self._all_ranks_ok(error is None):
            if self.args.should_save:
                shutil.rmtree(root, ignore_errors=True)
            what = f"{os.path.basename(final)} in {run_dir}"
            if isinstance(error, NonFiniteWeightsError):
                raise error
            if error is not None:
                raise ckpt.describe_write_error(error, what, run_dir) from error
            raise ckpt.CheckpointWriteError(errno.EIO, f"could not write {what}: another rank failed to write its part")
        if self.args.should_save:
            self._rotate_keeping_best(run_dir)

    def _get_output_dir(self, trial) -> str:
        """During _save_checkpoint: the staging root, so HF writes the checkpoint into tmp-checkpoint-<step>/."""
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _all_ranks_ok(self, ok: bool) -> bool:
        """True when `ok` holds on every rank (a collective: also a barrier)."""
        if not is_distributed():
            return ok
        flag = torch.tensor([0 if ok else 1], device=self.args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    def _best_checkpoint_in(self, run_dir: str) -> str | None:
        """The best checkpoint as a path inside run_dir (the spelling rotation compares), if it is on disk."""
        candidates = [self.state.best_model_checkpoint]
        if self.state.best_global_step:
            candidates.append(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"))
        for best in candidates:
            if best and os.path.isdir(best):
                if os.path.realpath(os.path.dirname(os.path.normpath(best))) == os.path.realpath(run_dir):
                    return os.path.join(run_dir, os.path.basename(os.path.normpath(best)))
                return best
        return None

    def _rotate_keeping_best(self, run_dir: str) -> None:
        """--save_total_limit: delete the oldest checkpoints, never the newest nor the best one."""
        if not self.args.save_total_limit or self.args.save_total_limit <= 0:
            return
        best = self._best_checkpoint_in(run_dir)
        if rotate_checkpoints is not None:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, best_model_checkpoint=best, use_mtime=True)
        else:  # transformers 4.x: the Trainer method protects state.best_model_checkpoint
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)

    def _relocate_best_checkpoint(self) -> None:
        """On resume HF drops (5.x) or keeps (4.x) a recorded best checkpoint whose path does not exist from here
        (e.g. the run folder was moved); find it again by its step so --load_best_model_at_end and rotation keep it."""
        state = self.state
        if state.best_global_step and not (state.best_model_checkpoint and os.path.isdir(state.best_model_checkpoint)):
            candidate = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
            if ckpt.is_complete_checkpoint(candidate):
                logger.info("best checkpoint (step %d) found at %s", state.best_global_step, candidate)
                state.best_model_checkpoint = candidate
            elif self.args.load_best_model_at_end:
                logger.warning(
                    "the best checkpoint (step %d, %s = %s) is not on disk any more: --load_best_model_at_end can only "
                    "restore a checkpoint that beats it", state.best_global_step, self.args.metric_for_best_model, state.best_metric,
                )

    def _load_callback_state(self) -> None:
        """Exact resume includes the early-stopping patience counter (HF restores callback states only with
        --restore_callback_states_from_checkpoint)."""
        self._relocate_best_checkpoint()  # both 4.x and 5.x call this right after loading the resumed state
        super()._load_callback_state()
        if self.args.restore_callback_states_from_checkpoint:
            return
        stored = (self.state.stateful_callbacks or {}).get("EarlyStoppingCallback")
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        if not isinstance(stored, dict):
            return
        counter = stored.get("attributes", {}).get("early_stopping_patience_counter")
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, EarlyStoppingCallback) and counter is not None:
                callback.early_stopping_patience_counter = int(counter)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """resume_from_checkpoint: a checkpoint folder, `auto` (the latest complete checkpoint of output_dir,
        or a fresh start when there is none) or True (the latest complete one, which must exist)."""
        if resume_from_checkpoint is True:
            found = ckpt.latest_checkpoint(self.args.output_dir)
            if found is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.args.output_dir!r} to resume from")
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str):
            resume_from_checkpoint = ckpt.resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint:
            done = ckpt.checkpoint_global_step(resume_from_checkpoint)
            planned = self.planned_steps()
            # (non-finite weights are refused when they are loaded: checkpoints.load_contrastive_state)
            if done < planned:
                resume_from_checkpoint = self._checkpoint_to_continue(resume_from_checkpoint, done, planned)
            ckpt.check_trainer_files(resume_from_checkpoint, getattr(self.accelerator, "scaler", None) is not None)
            if done >= planned:
                # HF would train one more step (its stop test runs only after a step): finish instead.
                return self._finish_from(resume_from_checkpoint, done, planned)
        else:
            check_finite(self.contrastive_model, f"the initial weights of {self.contrastive_model.encoder.config.base_model}")
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self.nan_guard.settle_pending()
        loss = self.nan_guard.applied_mean_loss()
        if loss is not None:  # the applied updates' mean (HF's counts dropped updates)
            output.metrics["train_loss"] = loss
            output = TrainOutput(output.global_step, loss, output.metrics)
        if self.skipped_steps:
            output.metrics["skipped_steps"] = len(self.skipped_steps)
        return output

    def _checkpoint_to_continue(self, folder: str, done: int, planned: int) -> str:
        """Training on from folder needs its optimizer and scheduler state (HF would silently restart Adam and the
        learning-rate schedule without them). A final model folder (a finished run given more steps) falls back to
        the run's latest checkpoint; anything else without them is refused."""
        if ckpt.has_optimizer_state(folder):
            return folder
        latest = ckpt.latest_checkpoint(self.args.output_dir)
        if os.path.realpath(folder) == os.path.realpath(self.args.output_dir) and latest and ckpt.has_optimizer_state(latest):
            logger.warning("the final model in %s (step %d of this run's %d) holds no optimizer state: continuing from "
                           "%s, the run's latest checkpoint", folder, done, planned, latest)
            return latest
        raise ckpt.CheckpointLoadError(
            f"{folder} is at step {done} of this run's {planned} but holds no optimizer/scheduler state ({ckpt.OPTIMIZER_NAME}, "
            f"{ckpt.SCHEDULER_NAME}: a final model folder or a --save_only_model checkpoint), so the training cannot "
            f"continue from it exactly; resume from a checkpoint-<step> folder, or start a new run from its weights with "
            f"--model_name_or_path {folder}"
        )

    def planned_steps(self) -> int:
        """The optimizer steps this run trains in all: --max_steps, else HF's count from the epochs
        (ceil(epochs x ceil(batches per epoch / gradient accumulation)))."""
        if self.args.max_steps > 0:
            return int(self.args.max_steps)
        batches = len(self.get_train_dataloader())
        per_epoch = max(math.ceil(batches / self.args.gradient_accumulation_steps), 1)
        return math.ceil(self.args.num_train_epochs * per_epoch)

    def _finish_from(self, checkpoint: str, done: int, planned: int) -> TrainOutput:
        """A resume at or past the end (a rerun of a finished run, or a kill during the final save): restore the
        checkpoint's weights, objective state and trainer state, and the best model with --load_best_model_at_end,
        then return as train() would, so the final save and the results files are written. Nothing is trained."""
        logger.warning(
            "%s is at step %d of this run's %d: nothing left to train; restoring it to finish the final save", checkpoint, done, planned
        )
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, ckpt.TRAINER_STATE_NAME))
        self._load_from_checkpoint(checkpoint)
        self._relocate_best_checkpoint()
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            self._load_best_model()
        loss = logged_training_loss(self.state.log_history)
        metrics = {"train_loss": loss, "epoch": self.state.epoch, "nothing_trained": 1.0}
        return TrainOutput(self.state.global_step, loss, metrics)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        if self._saving_checkpoint:  # inside a fresh staging folder that _save_checkpoint commits
            self._write_model_files(output_dir)
            return
        staged = ckpt.new_save_folder(output_dir)
        try:
            self._write_model_files(staged)
            if self._loaded_best and os.path.realpath(output_dir) == os.path.realpath(self.args.output_dir):
                ckpt.write_json_atomic(os.path.join(staged, ckpt.BEST_METRIC_NAME), self._best_record())
            ckpt.replace_files_from(staged, output_dir)
        except NonFiniteWeightsError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        except ckpt.WRITE_ERRORS as err:
            shutil.rmtree(staged, ignore_errors=True)
            raise ckpt.describe_write_error(err, f"the model to {output_dir}", output_dir) from err
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _best_record(self) -> dict[str, Any]:
        return {
            "metric_for_best_model": self.args.metric_for_best_model,
            "greater_is_better": self.args.greater_is_better,
            "best_metric": self.state.best_metric,
            "best_global_step": self.state.best_global_step,
            "best_model_checkpoint": self._loaded_best,
            "global_step": self.state.global_step,
        }

    def _write_model_files(self, output_dir: str) -> None:
        """A model folder (encoder, sentence-transformers files) plus the objective state and the run's flags."""
        model = self.contrastive_model
        self.nan_guard.settle_pending()  # --nan_check deferred: nothing is written past an unread verdict
        check_finite(model, f"at step {self.state.global_step}, before writing {output_dir}")
        write_model_folder(model.encoder, output_dir)
        objective_state = model.objective.state_dict()
        if objective_state:
            save_tensors(objective_state, os.path.join(output_dir, OBJECTIVE_STATE_NAME))
        if model.masked_lm is not None:  # cloned: a tied bias (BERT's predictions.bias) is one tensor under two names
            save_tensors({k: v.clone() for k, v in model.masked_lm.state_dict().items()}, os.path.join(output_dir, MASKED_LM_STATE_NAME))
        write_json(os.path.join(output_dir, TRAINING_ARGS_NAME), {"training": self.args.to_dict(), **self.run_config}, sort_keys=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        ckpt.load_contrastive_state(self.contrastive_model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        ckpt.load_contrastive_state(self.contrastive_model, self.state.best_model_checkpoint)
        self._loaded_best = self.state.best_model_checkpoint  # the final save records it in best_metric.json

