"""Several seeds of one configuration: per task mean, standard deviation, min and max over the seeds' test results,
beside the published figure of that configuration and the difference.

The recipes (SEEDS="42 1 2 3 4") train one run per seed in OUTPUT_DIR/seed-S/ and call write_seed_summary, which
writes OUTPUT_DIR/summary.json and summary.md. A seed whose run failed (no test JSON, or its FAILED marker) is listed
as failed and left out of the statistics, never dropped silently. The standard deviation is the sample one (n - 1),
0 for a single seed.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from clusterns.export.results import MISSING, markdown_table

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FAILED_MARKER = "FAILED"  # written by the recipe into seed-S/ when its training or test exits non-zero
TEST_JSON = "eval_test.json"
TABLE_TITLES = {"sts": "STS (test, Spearman x100)", "transfer": "Transfer (test accuracy)", "korsts_test": "KorSTS (test, x100)",
                "korsts_test_per_batch": "KorSTS (test, per-batch protocol, x100)", "sts_files": "STS files (Spearman x100)",
                "cluster": "Clustering (x100)"}


def seed_folder(output_dir: str, seed: int | str) -> str:
    return os.path.join(output_dir, f"seed-{seed}")


def parse_published(text: str | None) -> dict[str, float]:
    """"STS12=68.40,STS13=82.41,Avg.=76.25" -> {column: value} (the recipes' published figures). A column of the STS
    table is named as in the papers (STS-B, SICK-R); any other table's column as TABLE:COLUMN (transfer:MR,
    korsts_test_per_batch:Cos S)."""
    out: dict[str, float] = {}
    for item in (p.strip() for p in (text or "").split(",") if p.strip()):
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"published figures: {item!r} is not COLUMN=NUMBER") from None
        if not sep or not name:
            raise ValueError(f"published figures: {item!r} is not COLUMN=NUMBER")
    return out


def spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def seed_status(output_dir: str, seed: str) -> tuple[str, dict | None, str | None]:
    """("ok", payload, None) or ("failed", None, why) for one seed's folder."""
    folder = seed_folder(output_dir, seed)
    marker = os.path.join(folder, FAILED_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            return "failed", None, f.read().strip() or "the run failed"
    path = os.path.join(folder, TEST_JSON)
    if not os.path.isfile(path):
        return "failed", None, f"no {TEST_JSON} in {folder} (the run did not finish)"
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError) as err:
        return "failed", None, f"{path} is unreadable ({err})"
    if not isinstance(payload.get("tables"), dict):
        return "failed", None, f"{path} holds no result tables"
    return "ok", payload, None


def summarise_seeds(output_dir: str, seeds: list[str], published: dict[str, float] | None = None,
                    source: str | None = None, config: str | None = None) -> dict[str, Any]:
    """The summary of OUTPUT_DIR/seed-S/ for every seed (see the module docstring)."""
    runs, payloads = [], {}
    for seed in seeds:
        status, payload, why = seed_status(output_dir, seed)
        runs.append({"seed": seed, "status": status, **({"reason": why} if why else {})})
        if payload is not None:
            payloads[seed] = payload
    return {"output_dir": output_dir, "config": config, "seeds": list(seeds), "succeeded": list(payloads),
            "failed": [r["seed"] for r in runs if r["status"] != "ok"], "runs": runs, "published": published or {},
            "published_source": source, "tables": summarise_tables(payloads, published)}


def summarise_tables(payloads: dict[str, dict], published: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """{table: {column: mean, std, min, max, n, per_seed[, published, difference]}} over the runs' evaluation.py
    tables ({run name: payload}); a cell some runs lack (a task not run there) is left out."""
    values: dict[str, dict[str, list[float]]] = {}
    for payload in payloads.values():
        for table, cells in payload["tables"].items():
            for column, value in cells.items():
                if isinstance(value, (int, float)):
                    values.setdefault(table, {}).setdefault(column, []).append(float(value))
    names = list(payloads)
    tables: dict[str, dict[str, Any]] = {}
    for table, columns in values.items():
        tables[table] = {}
        for column, vals in columns.items():
            if len(vals) != len(names):
                continue
            entry = spread(vals)
            entry["per_seed"] = dict(zip(names, vals))
            paper = published_figure(published or {}, table, column)
            if paper is not None:
                entry.update(published=paper, difference=entry["mean"] - paper)
            tables[table][column] = entry
    return tables


# The recipes' published figures name the paper's STS columns; evaluation.py's tables name the tasks.
PUBLISHED_ALIASES = {"STS-B": "STSBenchmark", "SICK-R": "SICKRelatedness"}


def published_figure(published: dict[str, float], table: str, column: str) -> float | None:
    """The published value of a summary cell: TABLE:COLUMN, or for the STS table the paper's column name."""
    if f"{table}:{column}" in published:
        return published[f"{table}:{column}"]
    if table == "sts":
        return published.get({v: k for k, v in PUBLISHED_ALIASES.items()}.get(column, column))
    return None


def summary_markdown(summary: dict[str, Any]) -> str:
    title = f"## {summary.get('config') or os.path.basename(summary['output_dir'].rstrip('/'))}: {len(summary['seeds'])} seeds"
    lines = [title, "",
             f"Seeds {' '.join(summary['seeds'])}: {len(summary['succeeded'])} succeeded"
             + (f", **{len(summary['failed'])} failed** ({', '.join(summary['failed'])})" if summary["failed"] else "") + "."]
    for run in summary["runs"]:
        if run["status"] != "ok":
            lines.append(f"- seed {run['seed']}: failed: {run['reason']}")
    for table, columns in summary["tables"].items():
        if not columns:
            continue
        names = list(columns)
        rows = [["mean ± std", *[f"{columns[c]['mean']:.2f} ± {columns[c]['std']:.2f}" for c in names]],
                ["min – max", *[f"{columns[c]['min']:.2f} – {columns[c]['max']:.2f}" for c in names]]]
        if any("published" in columns[c] for c in names):
            rows.append(["published", *[f"{columns[c]['published']:.2f}" if "published" in columns[c] else MISSING for c in names]])
            rows.append(["mean − published", *[f"{columns[c]['difference']:+.2f}" if "difference" in columns[c] else MISSING
                                               for c in names]])
        for seed in summary["succeeded"]:
            rows.append([f"seed {seed}", *[f"{columns[c]['per_seed'][seed]:.2f}" for c in names]])
        lines += ["", f"### {TABLE_TITLES.get(table, table)}", "", markdown_table(["", *names], rows)]
    if summary.get("published_source"):
        lines += ["", f"Published: {summary['published_source']}."]
    return "\n".join(lines) + "\n"


def write_seed_summary(output_dir: str, seeds: list[str], published: dict[str, float] | None = None,
                       source: str | None = None, config: str | None = None) -> dict[str, Any]:
    summary = summarise_seeds(output_dir, seeds, published, source, config)
    with open(os.path.join(output_dir, SUMMARY_JSON), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output_dir, SUMMARY_MD), "w") as f:
        f.write(summary_markdown(summary))
    return summary
