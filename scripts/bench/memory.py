"""The largest batch whose peak RSS stays within a memory budget (doubling, then bisection)."""
from __future__ import annotations

from bench.harness import run_worker


def parse_memory_max(text: str) -> tuple[int, dict[str, int]]:
    """--memory_max: "4096" (every configuration) or "4096,diffcse-cached=1024" (a default and per-configuration
    caps). Raises ValueError naming the flag."""
    default, caps = None, {}
    for item in (part.strip() for part in str(text).split(",") if part.strip()):
        name, _, value = item.rpartition("=")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--memory_max: {item!r} is not a batch size (e.g. 4096 or 4096,diffcse-cached=1024)") from None
        if number < 1:
            raise ValueError(f"--memory_max: {item!r} must be >= 1")
        if name:
            caps[name] = number
        else:
            default = number
    if default is None:
        raise ValueError(f"--memory_max {text!r} has no default cap (e.g. 4096 or 4096,diffcse-cached=1024)")
    return default, caps


def memory_search(a, config: str, budget_mb: float, memory_max: int | None = None) -> dict:
    """Largest batch whose peak RSS (2 steps, fresh process) stays within the budget: doubling, then bisection,
    the doubling stopping at memory_max (default a.memory_max)."""
    memory_max = a.memory_max if memory_max is None else memory_max
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
            if batch > memory_max:  # the search stops at --memory_max: the largest batch is at least `low`
                return {"budget_mb": budget_mb, "largest_batch": low, "capped_at_memory_max": True,
                        "probes": dict(sorted(probes.items()))}
        else:
            high = batch
    while high - low > a.memory_resolution:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return {"budget_mb": budget_mb, "largest_batch": low, "capped_at_memory_max": False, "probes": dict(sorted(probes.items()))}


def rss_sweep(a, config: str, batches: list[int]) -> dict[int, float]:
    """Peak RSS (MB) of `config` at each batch (2 steps, fresh process each)."""
    return {batch: run_worker(a, config, batch_size=batch, steps=1, warmup=1, matmul=False)["peak_rss_mb"] for batch in batches}
