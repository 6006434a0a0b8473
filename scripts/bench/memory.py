"""The largest batch whose peak RSS stays within a memory budget (doubling, then bisection)."""
from __future__ import annotations

from bench.harness import run_worker


def memory_search(a, config: str, budget_mb: float) -> dict:
    """Largest batch whose peak RSS (2 steps, fresh process) stays within the budget: doubling, then bisection."""
    probes: dict[int, float] = {}

    def fits(batch: int) -> bool:
        if batch not in probes:
            probes[batch] = run_worker(a, config, batch_size=batch, steps=1, warmup=1, matmul=False)["peak_rss_mb"]
        return probes[batch] <= budget_mb

    low, high = 0, None
    batch = a.memory_start
    while high is None:
        if fits(batch):
            low, batch = batch, batch * 2
            if batch > a.memory_max:
                high = batch
        else:
            high = batch
    while high - low > a.memory_resolution:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return {"budget_mb": budget_mb, "largest_batch": low, "probes": dict(sorted(probes.items()))}
