"""--nan_policy stop|skip: one check per update, at the optimizer step, of every micro-batch's loss and of
the gradient norm (one host sync per update; every rank takes the same decision).

stop: NonFiniteLossError naming the step; nothing of that update is applied or saved.
skip: the update is dropped entirely: no optimizer or scheduler step, the non-parameter state the forward
      changed (ClusterNS centroids, BatchNorm statistics) rolled back, the step logged. More than
      --max_consecutive_skips dropped updates in a row stop the run (NonFiniteLossError): the run diverged or its
      weights are broken, and skipping on would only save a model that never trained.

Both policies: weights are never written when a tensor is not finite (check_finite, called before every save),
and train_loss is the mean loss of the applied updates (HF's counts dropped ones as 0 or as earlier averages).

HF has no hook that can cancel an optimizer step, so the guard wraps the optimizer's `step` (installed on
the first training step, when the optimizer exists) and puts the LR scheduler behind a proxy that skips
its step after a dropped update. The objective's logs of the dropped update are discarded too.

--nan_check (when the decision is read): every_step reads it before each update (one host sync per update: free
on the CPU, a stall of the queue on a GPU). deferred never waits: the decision stays on the device, where the fused
AdamW skips the update itself (its `found_inf`: weights, moments and step count unchanged) and the non-parameter
state is put back by a `where`; the decisions are read at the next logging step, checkpoint or the end of training,
which then stop (stop: naming the first bad step; the finite updates after it were applied, the bad ones never) or
log the dropped steps (skip) as every_step would. One difference: the LR schedule advances over a dropped update.
auto: deferred on a CUDA GPU with the fused AdamW (HF's default optimizer) and no fp16 loss scaler, else every_step."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from clusterns.training.distributed import is_distributed

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A non-finite loss or gradient under --nan_policy stop (raised before the update is applied)."""


class _GuardedScheduler:
    """Forwards everything to the LR scheduler, except that step() does nothing after a dropped update.

    A proxy rather than a patched method: schedulers pickle their __dict__ into scheduler.pt."""

    def __init__(self, scheduler, guard: "NonFiniteGuard"):
        self.__dict__["_scheduler"] = scheduler
        self.__dict__["_guard"] = guard

    def step(self, *args: Any, **kwargs: Any):
        if self._guard.update_skipped:
            return None
        return self._scheduler.step(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._scheduler, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._scheduler, name, value)


class NonFiniteGuard:
    """The per-update state of the check, and the objective's logs of the applied updates (for log())."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.losses: list[torch.Tensor] = []  # this update's micro-batch losses
        self.step_log_sums: dict[str, torch.Tensor] = {}
        self.step_log_count = 0
        self.grad_norm: torch.Tensor | float | None = None  # the norm HF computed (5.x), if any
        self.state: dict[str, Any] | None = None  # non-parameter state before the update (skip policy)
        self.update_skipped = False
        self.window_log_sums: dict[str, torch.Tensor] = {}  # applied updates since the last log()
        self.window_log_count = 0
        self.skipped_in_window = 0
        self.skipped_steps: list[int] = []
        self.consecutive_skips = 0
        self.applied_loss_sum: torch.Tensor | None = None  # sum over applied updates of their mean micro-batch loss
        self.applied_updates = 0
        self.window_loss_sum: torch.Tensor | None = None  # the same since the last log()
        self.window_updates = 0
        self.check_seconds: list[float] = []  # time of each update's check (benchmarks read it)
        self.deferred = False  # --nan_check resolved at install()
        self.pending: list[PendingUpdate] = []  # deferred: the updates whose decision has not been read yet

    # ---- hooks called by the trainer --------------------------------------------------------------
    def before_forward(self, model: nn.Module) -> None:
        self.install()
        if not self.losses and self.trainer.args.nan_policy == "skip":
            self.state = snapshot_state(model)  # first micro-batch of this update step

    def record(self, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        """No host sync here: checked once per update, at the optimizer step."""
        self.losses.append(loss.detach())
        for key, value in logs.items():
            value = value.detach().float()
            self.step_log_sums[key] = self.step_log_sums[key] + value if key in self.step_log_sums else value
        self.step_log_count += 1

    def pop_window_logs(self) -> tuple[dict[str, torch.Tensor], int, int]:
        """(sums, micro-batch count, dropped updates) since the last call."""
        out = (self.window_log_sums, self.window_log_count, self.skipped_in_window)
        self.window_log_sums, self.window_log_count, self.skipped_in_window = {}, 0, 0
        return out

    # ---- installation -----------------------------------------------------------------------------
    def install(self) -> None:
        trainer = self.trainer
        optimizer = trainer.optimizer
        if optimizer is not None and not getattr(optimizer.step, "_clusterns_guard", False):
            original = optimizer.step
            self.deferred = resolve_nan_check(trainer.args.nan_check, optimizer, trainer.args.device,
                                              getattr(trainer.accelerator, "scaler", None) is not None)

            def step(*args: Any, **kwargs: Any):
                started = time.perf_counter()
                if self.deferred:
                    update = self.evaluate()
                    skips_on_device(optimizer, update.bad)  # the fused step is a no-op on the device when bad
                    try:
                        out = original(*args, **kwargs)
                    finally:
                        skips_on_device(optimizer, None)
                    if update.state:  # what the forward changed (ClusterNS centroids), put back where bad
                        restore_where(trainer.contrastive_model, update.state, update.bad)
                        update.state = None
                    self.pending.append(update)
                    self.check_seconds.append(time.perf_counter() - started)
                    return out
                self.update_skipped = self.check()
                self.check_seconds.append(time.perf_counter() - started)
                if self.update_skipped:
                    optimizer.zero_grad(set_to_none=True)
                    return None
                return original(*args, **kwargs)

            step._clusterns_guard = True
            if hasattr(original, "_wrapped_by_lr_sched"):  # keep torch's scheduler-order check quiet
                step._wrapped_by_lr_sched = True
            optimizer.step = step
        scheduler = trainer.lr_scheduler
        metric_driven = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or type(scheduler).__name__ == "GreedyLR"
        if scheduler is not None and not isinstance(scheduler, _GuardedScheduler) and not metric_driven:
            trainer.lr_scheduler = _GuardedScheduler(scheduler, self)

    # ---- the check --------------------------------------------------------------------------------
    def _gradient_norm(self) -> torch.Tensor | None:
        if self.grad_norm is not None:
            return torch.as_tensor(self.grad_norm)
        grads = [p.grad for p in self.trainer.contrastive_model.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else None

    def evaluate(self) -> "PendingUpdate":
        """This update's verdict, on the device (no host sync): a non-finite loss in any micro-batch, or a non-finite
        gradient norm, on any rank. Clears the per-update state."""
        trainer = self.trainer
        losses = torch.stack(self.losses).float() if self.losses else None
        device = losses.device if losses is not None else trainer.args.device
        bad = torch.zeros((), dtype=torch.bool, device=device)
        if losses is not None:
            bad = bad | ~torch.isfinite(losses).all()
        grad_norm = None
        if getattr(trainer.accelerator, "scaler", None) is None:  # fp16: the GradScaler handles overflowing gradients
            grad_norm = self._gradient_norm()
            if grad_norm is not None:
                bad = bad | ~torch.isfinite(grad_norm.to(device)).all()
        if is_distributed():
            flag = bad.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag.bool()
        update = PendingUpdate(step=trainer.state.global_step + 1, bad=bad, losses=losses, grad_norm=grad_norm,
                               logs=self.step_log_sums, count=self.step_log_count, state=self.state)
        self.losses, self.step_log_sums, self.step_log_count = [], {}, 0
        self.grad_norm, self.state = None, None
        return update

    def check(self) -> bool:
        """every_step: True if the update must be dropped (see settle)."""
        return self.settle(self.evaluate())

    def settle_pending(self) -> None:
        """--nan_check deferred: read the verdicts of the updates since the last call (one host sync) and settle them
        in order (stop raises naming the first bad step; skip logs the dropped ones). Nothing to do otherwise."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        verdicts = torch.stack([u.bad for u in pending]).tolist()
        for update, bad in zip(pending, verdicts):
            self.settle(update, bad, applied_after=[u.step for u in pending if u.step > update.step])

    def settle(self, update: "PendingUpdate", bad: bool | None = None, applied_after: list[int] | None = None) -> bool:
        """Book an update whose verdict is read (`bad`; read here when None): its logs and loss when applied; when
        dropped, --nan_policy stop raises NonFiniteLossError, skip rolls back the forward's state (every_step), logs
        the step, and stops after --max_consecutive_skips. Returns whether it was dropped."""
        trainer = self.trainer
        losses, grad_norm, state = update.losses, update.grad_norm, update.state
        if bad is None:
            bad = bool(update.bad)
        if not bad:
            for key, value in update.logs.items():
                self.window_log_sums[key] = self.window_log_sums[key] + value if key in self.window_log_sums else value
            self.window_log_count += update.count
            if losses is not None:  # no host sync: a device scalar, read once at the end of training
                mean = losses.mean()
                self.applied_loss_sum = mean if self.applied_loss_sum is None else self.applied_loss_sum + mean
                self.applied_updates += 1
                self.window_loss_sum = mean if self.window_loss_sum is None else self.window_loss_sum + mean
                self.window_updates += 1
            self.consecutive_skips = 0
            return False
        step = update.step
        values = losses.tolist() if losses is not None else []
        loss_text = ", ".join(f"{v:g}" for v in values) or "n/a"
        what = "gradient" if all(math.isfinite(v) for v in values) else "loss"
        norm_text = f"{float(grad_norm):g}" if grad_norm is not None else "n/a"
        message = f"non-finite {what} at step {step} (loss {loss_text}; gradient norm {norm_text})"
        late = ""
        if applied_after is not None:
            late = (f" (--nan_check deferred: read at step {trainer.state.global_step}; that update was skipped on the "
                    f"device{', the finite updates after it applied' if applied_after else ''})")
        if trainer.args.nan_policy != "skip":
            logger.error(message + late)
            raise NonFiniteLossError(
                f"{message}; stopped (--nan_policy stop): this step's update was not applied and nothing was saved{late}; "
                "the checkpoints written before it are intact. --nan_policy skip drops such updates and continues."
            )
        self.consecutive_skips += 1
        limit = trainer.args.max_consecutive_skips
        if limit and self.consecutive_skips > limit:
            logger.error(message + late)
            raise NonFiniteLossError(
                f"{message}; stopped: {self.consecutive_skips} updates in a row were non-finite and dropped "
                f"(--max_consecutive_skips {limit}): the run diverged (lower --learning_rate) or its weights are broken. "
                "Nothing of these updates was applied or saved; the checkpoints written before them are intact."
            )
        logger.warning("%s; update dropped (--nan_policy skip): no optimizer%s step%s", message,
                       " or scheduler" if applied_after is None else "", late)
        if state:
            trainer.contrastive_model.load_state_dict(state, strict=False)
        self.skipped_steps.append(step)
        self.skipped_in_window += 1
        trainer.state.log_history.append({"step": step, "nonfinite": what, "nonfinite_loss": loss_text, "nan_policy": "skip"})
        return True

    def pop_window_loss(self) -> float | None:
        """The mean loss of the applied updates since the last call, averaged over ranks (HF's logged loss, without
        the dropped updates); None when there was none on any rank."""
        total, count = self.window_loss_sum, self.window_updates
        self.window_loss_sum, self.window_updates = None, 0
        return mean_over_ranks(total, count, self.trainer.args.device)

    def applied_mean_loss(self) -> float | None:
        """The mean loss of the updates applied in this process (averaged over ranks), or None before any."""
        if self.applied_loss_sum is None:
            return None
        return mean_over_ranks(self.applied_loss_sum, self.applied_updates, self.trainer.args.device)


def mean_over_ranks(total: torch.Tensor | None, count: int, device: torch.device) -> float | None:
    """sum(total) / sum(count) over the ranks (one all-reduce of the pair); None when the counts sum to 0.
    total: a device scalar (None: 0)."""
    device = total.device if total is not None else device
    pair = torch.stack([total.detach().double().reshape(()) if total is not None else torch.zeros((), dtype=torch.float64, device=device),
                        torch.tensor(float(count), dtype=torch.float64, device=device)])
    if is_distributed():
        dist.all_reduce(pair)
    return float(pair[0] / pair[1]) if float(pair[1]) else None


class NonFiniteWeightsError(RuntimeError):
    """A tensor about to be saved (or resumed from) is NaN or infinite."""


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def check_finite(model: nn.Module, where: str) -> None:
    """Raise NonFiniteWeightsError naming the tensor when any weight or buffer of `model` is not finite."""
    name = first_non_finite(model.state_dict())
    if name is not None:
        raise NonFiniteWeightsError(
            f"{name} is not finite ({where}): refusing to write or train on broken weights. The run diverged "
            "(lower --learning_rate) or was resumed from a broken checkpoint; resume from an earlier checkpoint"
        )


def snapshot_state(model: nn.Module) -> dict[str, Any]:
    """The model's non-parameter state (objective buffers such as ClusterNS centroids, BatchNorm statistics),
    so that a dropped update also undoes what the forward changed."""
    params = {name for name, _ in model.named_parameters()}
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in model.state_dict().items() if k not in params}


NAN_CHECKS = ("auto", "every_step", "deferred")


@dataclass
class PendingUpdate:
    """One update's verdict on the device, and what booking it needs."""

    step: int
    bad: torch.Tensor  # bool scalar, on the device
    losses: torch.Tensor | None
    grad_norm: torch.Tensor | None
    logs: dict[str, torch.Tensor]
    count: int
    state: dict[str, Any] | None = None


def skips_on_device(optimizer, bad: torch.Tensor | None) -> None:
    """Give the fused optimizer inside `optimizer` (HF's / accelerate's wrapper) the flag that makes its step a
    no-op on the device (`found_inf`, what the AMP grad scaler sets); None removes it."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if bad is None:
        inner.__dict__.pop("found_inf", None)
    else:
        inner.found_inf = bad.to(torch.float32)


def skips_on_device_supported(optimizer) -> bool:
    """torch's Adam/AdamW with fused=True read `found_inf` (the foreach and for-loop versions refuse it)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and bool(inner.defaults.get("fused"))


def resolve_nan_check(nan_check: str, optimizer, device: torch.device, has_scaler: bool) -> bool:
    """--nan_check -> whether the check is deferred. Raises ValueError for deferred where it cannot be (an optimizer
    without found_inf, or fp16's loss scaler, which sets found_inf itself)."""
    if nan_check == "every_step":
        return False
    supported = skips_on_device_supported(optimizer) and not has_scaler
    if nan_check == "deferred":
        if not supported:
            raise ValueError(
                "--nan_check deferred needs the fused AdamW (--optim adamw_torch_fused, the default) and no fp16 loss "
                "scaler (--bf16 or fp32); use --nan_check every_step"
            )
        return True
    return supported and torch.device(device).type == "cuda"


def restore_where(model: nn.Module, state: dict[str, Any], bad: torch.Tensor) -> None:
    """Put back the non-parameter tensors of `state` (snapshot_state) where `bad` is true, on the device."""
    current = model.state_dict()
    for name, before in state.items():
        now = current.get(name)
        if torch.is_tensor(now) and torch.is_tensor(before) and now.shape == before.shape:
            now.copy_(torch.where(bad, before.to(now.device), now))
