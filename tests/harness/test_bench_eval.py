"""scripts/bench_eval.py end to end on a tiny model over the real STS test files: the suite and the bare encoding are
timed, the JSON has the documented keys, and --update_md writes its own section of a BENCHMARKS.md."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, data_mirror

sys.path.insert(0, str(REPO / "scripts"))

import bench_eval  # noqa: E402
import benchmarks_md  # noqa: E402


def test_bench_eval_tiny_model(tiny_bert, tmp_path, capsys):
    senteval = data_mirror() / "senteval"
    if not (senteval / "downstream" / "STS").is_dir() and not (senteval / "STS").is_dir():
        pytest.skip(f"SentEval data not found under {senteval}")
    out, md = tmp_path / "eval.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro\n\n<!-- bench_train:start -->\ntraining figures\n<!-- bench_train:end -->\n")
    assert bench_eval.main(["--model_name_or_path", str(tiny_bert), "--data_dir", str(senteval), "--batch_size", "256",
                            "--json", str(out), "--markdown", "--update_md", str(md)]) == 0
    report = json.loads(out.read_text())
    assert report["suite_s"] > 0 and report["bare_encode_s"] > 0
    assert report["ratio"] == pytest.approx(report["suite_s"] / report["bare_encode_s"], rel=1e-2)
    assert report["distinct_sentences"] > 10000  # STS12-16 + STS-B + SICK-R test, each sentence once
    assert list(report["sts_test"]) == ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness", "Avg."]
    text = md.read_text()
    assert "training figures" in text and "intro" in text  # other sections are kept
    assert "<!-- bench_eval:start -->" in text and "python scripts/bench_eval.py --model_name_or_path" in text
    assert "| cpu | " in text and f"Target: suite <= {bench_eval.TARGET_RATIO}x" in text and bench_eval.TARGET_RATIO == 1.1
    assert "## STS test suite" in capsys.readouterr().out


def test_update_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "B.md"
    benchmarks_md.update_section(str(path), "a", "first A")
    assert path.read_text().startswith(benchmarks_md.HEADER) and "first A" in path.read_text()
    benchmarks_md.update_section(str(path), "b", "only B")
    benchmarks_md.update_section(str(path), "a", "second A")
    text = path.read_text()
    assert "first A" not in text and "second A" in text and "only B" in text
    assert text.index("second A") < text.index("only B")  # replaced in place, not appended
    assert text.count("<!-- a:start -->") == 1 and text.count("<!-- a:end -->") == 1
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any other file of the checkout


def test_command_line_quotes_arguments():
    assert benchmarks_md.command_line("scripts/x.py", ["--a", "b c"]) == "python scripts/x.py --a 'b c'"
