"""Counting the operations that make the host wait for the device (a GPU sync), on any device, CPU included.

A training step queued on a GPU runs at the device's speed only while the host never waits for a result: reading a
value (`.item()`, `bool(t)`, `float(t)`, an `if` on a tensor), an operation whose output size depends on the data
(`nonzero`, boolean indexing, `masked_select`, `unique`, `repeat_interleave` without an output size), or a copy back to
the host each stall the queue. These are the same operators on the CPU, where they cost nothing, so the count is
taken on the CPU in the tests (tests/training/test_host_syncs.py) and on CUDA by scripts/bench_gpu.py.

`HostSyncCounter` is a TorchDispatchMode: it sees every operator dispatched while it is active (not the ones an
operator's kernel runs inside itself). A copy to the host is only visible where the source is on another device.
`CountHostSyncsCallback` turns it on from the start to the end of every optimizer step of a Trainer (forward,
backward, clipping, the optimizer and the scheduler; not the logging, evaluation and saving that follow a step)."""
from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

aten = torch.ops.aten

# Operators that always make the host wait for the device's result.
SYNCING_OPERATORS = frozenset({
    aten._local_scalar_dense.default,  # .item(), bool(), int(), float() of a tensor
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.argwhere.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
})


def _bool_index(args: Any) -> bool:
    """Boolean / byte index tensors in aten.index's index list (x[mask]: a nonzero inside the kernel)."""
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(t) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


def is_host_sync(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in SYNCING_OPERATORS:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default):
        return _bool_index(args)
    if func is aten.repeat_interleave.Tensor or func is aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size") is None
    if func in (aten._to_copy.default, aten.copy_.default):  # a device -> host copy
        source = args[1] if func is aten.copy_.default else args[0]
        target_cpu = (args[0].device.type == "cpu") if func is aten.copy_.default else (
            str(kwargs.get("device", source.device)).startswith("cpu"))
        return torch.is_tensor(source) and source.device.type not in ("cpu", "meta") and target_cpu
    return False


class HostSyncCounter(TorchDispatchMode):
    """Counts host syncs by operator name; `where` keeps the Python stack of the first few (to find them)."""

    def __init__(self, keep_stacks: int = 20):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.where: list[tuple[str, str]] = []
        self.keep_stacks = keep_stacks
        self.paused = False  # set by an observer reading values itself (a test's recorder), not counted

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Inside, syncs are not counted (the instrumentation's own reads)."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused and is_host_sync(func, args, kwargs):
            name = str(func.overloadpacket.__name__)
            self.counts[name] += 1
            if len(self.where) < self.keep_stacks:
                frames = [f for f in traceback.extract_stack()[:-2] if "torch/utils/_python_dispatch" not in f.filename]
                self.where.append((name, "".join(traceback.format_list(frames[-6:]))))
        return func(*args, **kwargs)


class CountHostSyncsCallback(TrainerCallback):
    """Counts the host syncs of each optimizer step (on_step_begin to on_step_end) of a Trainer run:
    `per_step[i]` the count of the i-th step, `counter` the totals and the first stacks."""

    def __init__(self, keep_stacks: int = 20):
        self.counter = HostSyncCounter(keep_stacks)
        self.per_step: list[int] = []
        self._before: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._before = self.counter.total
        self.counter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._before is not None:
            self.counter.__exit__(None, None, None)
            self.per_step.append(self.counter.total - self._before)
            self._before = None
