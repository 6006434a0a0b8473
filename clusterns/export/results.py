"""Markdown result tables in the papers' layout, from evaluation.py --output_json files.

    STS:      Model | STS12 | STS13 | STS14 | STS15 | STS16 | STS-B | SICK-R | Avg.
    transfer: Model | MR | CR | SUBJ | MPQA | SST | TREC | MRPC | Avg.
    KorSTS:   Model | Avg. | Cos P | Cos S | Euc P | Euc S | Man P | Man S | Dot P | Dot S

Cells are evaluation.py's printed values (x100, two decimals). Avg. is SimCSE's mean of the
rounded cells, shown only when every task of the row was evaluated ("–" otherwise; evaluation.py
itself counts a missing task as 0.00).
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Iterable


MISSING = "–"

STS_COLUMNS = [("STS12", "STS12"), ("STS13", "STS13"), ("STS14", "STS14"), ("STS15", "STS15"), ("STS16", "STS16"),
               ("STS-B", "STSBenchmark"), ("SICK-R", "SICKRelatedness")]

DEV_STS_COLUMNS = [("STS-B", "STSBenchmark"), ("SICK-R", "SICKRelatedness")]

TRANSFER_COLUMNS = [("MR", "MR"), ("CR", "CR"), ("SUBJ", "SUBJ"), ("MPQA", "MPQA"), ("SST", "SST2"), ("TREC", "TREC"),
                    ("MRPC", "MRPC")]

KORSTS_COLUMNS = ["Cos P", "Cos S", "Euc P", "Euc S", "Man P", "Man S", "Dot P", "Dot S"]

def is_eval_payload(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("tables"), dict) and "results" in data and "mode" in data

def find_eval_jsons(path: str | os.PathLike) -> list[str]:
    """evaluation.py --output_json files: `path` itself, or the JSON files in folder `path` (and its eval/ subfolder)."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    found = []
    for pattern in ("*.json", os.path.join("eval", "*.json"), os.path.join("results", "*.json")):
        for file in sorted(glob.glob(os.path.join(path, pattern))):
            try:
                with open(file) as f:
                    if is_eval_payload(json.load(f)):
                        found.append(file)
            except (OSError, ValueError):
                continue
    return found

def load_payload(file: str) -> dict:
    with open(file) as f:
        data = json.load(f)
    if not is_eval_payload(data):
        raise ValueError(f"{file!r} is not a JSON written by evaluation.py --output_json (no tables/results/mode)")
    return data

def default_label(payload: dict, file: str | None = None) -> str:
    model = str(payload.get("model_name_or_path") or (os.path.dirname(file) if file else "model")).rstrip("/")
    label = os.path.basename(model) or model
    if payload.get("pooler"):
        label += f" ({payload['pooler']})"
    return label

def _cells(table: dict, evaluated: set, columns: list[tuple[str, str]], table_keys: dict | None = None) -> list[str]:
    out = []
    for _, task in columns:
        key = (table_keys or {}).get(task, task)
        value = table.get(key)
        out.append(f"{float(value):.2f}" if task in evaluated and value is not None else MISSING)
    return out

def _avg(cells: list[str]) -> str:
    if not cells or any(c == MISSING for c in cells):
        return MISSING
    return "%.2f" % (sum(float(c) for c in cells) / len(cells))

def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

def result_rows(entries: Iterable[tuple[str, dict]]) -> dict[str, list[list[str]]]:
    """{section: rows} for the payloads; sections: sts, transfer, korsts, korsts_per_batch, dev_sts, dev_transfer, korsts_dev."""
    sections: dict[str, list[list[str]]] = {}
    for label, payload in entries:
        mode = payload.get("mode", "test")
        tables = payload.get("tables", {})
        evaluated = set(payload.get("results", {}))
        name = label if mode != "fasttest" else f"{label} [fasttest]"
        if mode == "dev":
            sts_key, transfer_key, columns = "dev_sts", "dev_transfer", DEV_STS_COLUMNS
        else:
            sts_key, transfer_key, columns = "sts", "transfer", STS_COLUMNS
        if evaluated & {t for _, t in columns}:
            cells = _cells(tables.get("sts", {}), evaluated, columns)
            sections.setdefault(sts_key, []).append([name, *cells, _avg(cells)])
        if evaluated & {t for _, t in TRANSFER_COLUMNS}:
            cells = _cells(tables.get("transfer", {}), evaluated, TRANSFER_COLUMNS)
            sections.setdefault(transfer_key, []).append([name, *cells, _avg(cells)])
        if "KorSTS" in evaluated:
            split = "dev" if mode == "dev" else "test"
            for suffix in ("", "_per_batch"):
                table = tables.get(f"korsts_{split}{suffix}")
                if not table:
                    continue
                cells = [f"{float(table[c]):.2f}" if table.get(c) is not None else MISSING for c in KORSTS_COLUMNS]
                key = ("korsts" if split == "test" else "korsts_dev") + suffix
                sections.setdefault(key, []).append([name, _avg(cells), *cells])
    return sections

# evaluation.py's table names -> (section, the columns in the papers' order as (header, key)).
AGGREGATE_SECTIONS = {
    "sts": ("sts", [*STS_COLUMNS, ("Avg.", "Avg.")]),
    "transfer": ("transfer", [*TRANSFER_COLUMNS, ("Avg.", "Avg.")]),
    "korsts_test": ("korsts", [("Avg.", "Avg."), *[(c, c) for c in KORSTS_COLUMNS]]),
    "korsts_test_per_batch": ("korsts_per_batch", [("Avg.", "Avg."), *[(c, c) for c in KORSTS_COLUMNS]]),
}


def aggregate_rows(label: str, tables: dict[str, dict[str, dict]]) -> dict[str, list[list[str]]]:
    """{section: rows} for runs of one configuration summarised per cell (export/seeds.py summarise_tables): a
    "mean ± std" row, and where published figures are known a "published" row and a "difference" row (mean minus
    published)."""
    sections: dict[str, list[list[str]]] = {}
    for table, (section, columns) in AGGREGATE_SECTIONS.items():
        cells = tables.get(table)
        if not cells:
            continue
        n = max(c["n"] for c in cells.values())
        row = [f"{label} (mean ± std, {n} runs)"]
        row += [f"{cells[k]['mean']:.2f} ± {cells[k]['std']:.2f}" if k in cells else MISSING for _, k in columns]
        rows = [row]
        if any("published" in cells.get(k, {}) for _, k in columns):
            rows.append([f"{label}: published", *[f"{cells[k]['published']:.2f}" if "published" in cells.get(k, {}) else MISSING
                                                   for _, k in columns]])
            rows.append([f"{label}: mean − published", *[f"{cells[k]['difference']:+.2f}" if "difference" in cells.get(k, {})
                                                         else MISSING for _, k in columns]])
        sections[section] = rows
    return sections


SECTION_TITLES = {
    "sts": ("STS (test, Spearman x100)", ["Model", *[c for c, _ in STS_COLUMNS], "Avg."]),
    "transfer": ("Transfer (test accuracy)", ["Model", *[c for c, _ in TRANSFER_COLUMNS], "Avg."]),
    "korsts": ("KorSTS (test, x100)", ["Model", "Avg.", *KORSTS_COLUMNS]),
    "korsts_per_batch": ("KorSTS (test, KoDiffCSE per-batch protocol, x100)", ["Model", "Avg.", *KORSTS_COLUMNS]),
    "dev_sts": ("STS dev (Spearman x100)", ["Model", *[c for c, _ in DEV_STS_COLUMNS], "Avg."]),
    "dev_transfer": ("Transfer (dev accuracy)", ["Model", *[c for c, _ in TRANSFER_COLUMNS], "Avg."]),
    "korsts_dev": ("KorSTS (dev, x100)", ["Model", "Avg.", *KORSTS_COLUMNS]),
    "korsts_dev_per_batch": ("KorSTS (dev, per-batch protocol, x100)", ["Model", "Avg.", *KORSTS_COLUMNS]),
}

def results_markdown(entries: Iterable[tuple[str, dict]], heading: str = "###",
                     aggregates: Iterable[dict[str, list[list[str]]]] = ()) -> str:
    """Markdown tables (papers' layout) for [(row label, evaluation.py payload)], plus aggregate_rows' rows."""
    sections = result_rows(entries)
    for extra in aggregates:
        for key, rows in extra.items():
            sections.setdefault(key, []).extend(rows)
    parts = []
    for key, (title, header) in SECTION_TITLES.items():
        if key in sections:
            parts.append(f"{heading} {title}\n\n{markdown_table(header, sections[key])}")
    return "\n\n".join(parts)

def labelled_payloads(paths: Iterable[str], labels: list[str] | None = None) -> list[tuple[str, dict]]:
    """Load every evaluation JSON under `paths` (files or run folders), labelled by model (+ pooler), unique."""
    files: list[str] = []
    for path in paths:
        found = find_eval_jsons(path)
        if not found:
            raise FileNotFoundError(f"{path!r}: no JSON written by evaluation.py --output_json found")
        files += found
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} result files ({', '.join(files)})")
    entries = [(labels[i] if labels else default_label(load_payload(f), f), load_payload(f)) for i, f in enumerate(files)]
    if not labels:  # disambiguate repeated labels by the file name
        counts: dict[str, int] = {}
        for label, _ in entries:
            counts[label] = counts.get(label, 0) + 1
        entries = [(f"{label} · {Path(f).stem}" if counts[label] > 1 else label, p) for (label, p), f in zip(entries, files)]
    return entries
