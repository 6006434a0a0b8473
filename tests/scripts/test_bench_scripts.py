"""Smoke tests of scripts/bench_train.py (tiny model, 1 step): it runs every configuration and writes the JSON keys."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_train.py"
sys.path.insert(0, str(REPO / "scripts"))

import bench_data  # noqa: E402
import bench_encode  # noqa: E402
import bench_gpu  # noqa: E402
import profile_step  # noqa: E402
import bench_train  # noqa: E402
from bench import flops, memory, sentences  # noqa: E402

REQUIRED_RATIOS = ("infonce_vs_sentence_transformers", "clusterns_vs_infonce", "mixcse_vs_infonce", "diffcse_vs_infonce")


def _check_report(report: dict, configs: list[str]) -> None:
    for key in REQUIRED_RATIOS:
        assert report["ratios"][key] > 0, key
    assert 0 < report["matmul_utilisation"]
    assert set(report["peak_rss_mb"]) == set(configs)
    assert all(v > 0 for v in report["peak_rss_mb"].values())
    assert 0 <= report["padding_fraction"] < 1
    assert report["summary"]["clusterns"]["wall_s_per_step"] > 0
    d = report["diffcse_expected"]
    assert d["implied_by_time"] > 1 and d["implied_by_flops"] > 1


def test_bench_train_smoke_in_process(tiny_bert, tmp_path, capsys):
    out = tmp_path / "bench.json"
    configs = list(bench_train.DEFAULT_CONFIGS)
    code = bench_train.main([
        "--model_name_or_path", str(tiny_bert), "--batch_size", "8", "--max_seq_length", "16", "--warmup", "1",
        "--steps", "1", "--repeat", "1", "--threads", "1", "--in_process", "--json", str(out), "--markdown",
    ])
    assert code == 0
    report = json.loads(out.read_text())
    _check_report(report, configs)
    printed = capsys.readouterr().out
    assert "| configuration | packed linear |" in printed and "GPU: not measured" in printed
    assert report["summary"]["infonce-nopack"]["packed_linear"] is False
    assert "| target (CPU) | threshold | measured | met |" in printed
    # tokenization timed the same way for both (issue 23): ours per step if it tokenized there, ST's collator
    assert report["summary"]["infonce"]["tokenize_ms_per_step"] > 0 and report["summary"]["st"]["collate_ms_per_step"] > 0
    st, ours = report["summary"]["st"], report["summary"]["infonce"]
    assert report["ratios"]["infonce_vs_sentence_transformers_both_tokenizing"] == pytest.approx(
        st["wall_s_per_step"] / (ours["wall_s_per_step"] + ours["tokenize_ms_per_step"] / 1000))
    assert report["ratios"]["infonce_vs_sentence_transformers_neither_tokenizing"] == pytest.approx(
        (st["wall_s_per_step"] - st["collate_ms_per_step"] / 1000) / ours["wall_s_per_step"])
    assert "tokenization, timed the same way for both" in printed
    # --from_json prints the same tables from the saved report, without measuring
    assert bench_train.main(["--from_json", str(out)]) == 0
    assert capsys.readouterr().out.strip() == bench_train.markdown(report).strip()


def test_targets_table_marks_each_threshold():
    report = {
        "ratios": {"infonce_vs_sentence_transformers": 1.3, "clusterns_vs_infonce": 1.06, "mixcse_vs_infonce": 1.01,
                   "diffcse_vs_infonce": 2.4},
        "summary": {"infonce": {"peak_rss_mb": 900.0}, "st": {"peak_rss_mb": 1000.0}},
        "diffcse_expected": {"implied_by_time": 2.3, "measured_over_implied": 2.4 / 2.3},
        "matmul_utilisation": 0.49,
    }
    met = {t: ok for t, _, _, ok in bench_train.targets(report)}
    assert met == {
        "infonce sentences/s vs sentence-transformers": True, "infonce peak RSS vs sentence-transformers": True,
        "clusterns time per step vs infonce": False, "mixcse time per step vs infonce": True,
        "diffcse vs what its extra passes imply (timings)": True, "infonce matmul utilisation": False,
        "issue 23: infonce sentences/s vs sentence-transformers": False,
        "issue 23: infonce matmul utilisation (FLOPs it runs / torch.mm's rate)": False,
    }
    report["ratios"]["infonce_vs_sentence_transformers"], report["matmul_utilisation"] = 1.8, 0.85
    met = {t: ok for t, _, _, ok in bench_train.targets(report)}
    assert met["issue 23: infonce sentences/s vs sentence-transformers"] and met[
        "issue 23: infonce matmul utilisation (FLOPs it runs / torch.mm's rate)"]


def test_flop_count_by_hand():
    shapes = {"hidden": 4, "intermediate": 8, "layers": 2}
    # per token and layer 2 * (4*16 + 2*4*8) = 256; attention 4 * L^2 * H per sequence
    assert flops.encoder_flops(shapes, 10, [3, 2]) == 2 * (10 * 256 + 4 * 4 * (9 + 4))
    m = flops.matmul_throughput(shapes, 16, repeat=1)
    assert m["flops"] == 3 * 2 * 16 * (4 * 12 + 4 * 4 + 4 * 8 + 8 * 4) and m["flop_per_s"] > 0


def test_last_layer_read_saving_by_hand():
    """--prune_last_layer: the last layer runs keys/values on every token, the rest on one token per sentence."""
    shapes = {"hidden": 4, "intermediate": 8, "layers": 2}
    # full: 10 tokens * 256 + 4*4*(9+4); read: 10 * 2*(2*16) + 3 rows * 2*(2*16 + 2*4*8) + 4*4*(3+2) (one query)
    assert flops.last_layer_read_saving(shapes, 10, 3, [3, 2]) == (2560 + 208) - (640 + 576 + 80)
    measured = {"shapes": shapes, "rows": [3, 3], "lengths": [3, 2], "last_layer_reads": True}
    per_step = flops.read_saving_per_step(measured, 10)
    assert per_step == flops.last_layer_read_saving(shapes, 10, 3, []) + flops.last_layer_read_saving(shapes, 0, 0, [3, 3, 3, 2, 2, 2]) / 2
    assert flops.read_saving_per_step(dict(measured, last_layer_reads=False), 10) == 0.0
    report = flops.flops_report(dict(measured, tokens_per_step=10, padded_tokens_per_step=15, packed_linear=True,
                                     wall_s_per_step=1.0), 3)
    full = 3 * (flops.encoder_flops(shapes, 10, []) + flops.encoder_flops(shapes, 0, [3, 3, 3, 2, 2, 2]) / 2)
    assert report["executed_flop_per_step"] == full - 3 * per_step and "[CLS] tokens only" in report["last_layer_note"]


def test_sentences_cycle_and_file(tmp_path):
    assert len(sentences.load_sentences(None, 500)) == 500
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\n\ntwo\nthree\n")
    got = sentences.load_sentences(str(corpus), 7)
    assert sorted(set(got)) == ["one", "three", "two"] and len(got) == 7


def test_memory_search_bisects(monkeypatch):
    calls = []

    def fake(a, config, batch_size=None, steps=None, warmup=None, matmul=True):
        calls.append(batch_size)
        return {"peak_rss_mb": 1000 + 10 * batch_size}

    monkeypatch.setattr(memory, "run_worker", fake)
    a = type("A", (), {"memory_start": 64, "memory_max": 4096, "memory_resolution": 8})()
    found = memory.memory_search(a, "infonce", 3000)  # fits up to batch 200
    assert found["largest_batch"] <= 200 < found["largest_batch"] + 8
    assert calls[:3] == [64, 128, 256] and found["capped_at_memory_max"] is False
    calls.clear()
    found = memory.memory_search(a, "infonce-cached", 1e9)  # everything fits: the search stops at --memory_max
    assert found == {"budget_mb": 1e9, "largest_batch": 4096, "capped_at_memory_max": True,
                     "probes": {b: 1000 + 10 * b for b in (64, 128, 256, 512, 1024, 2048, 4096)}}
    assert max(calls) == 4096
    assert memory.memory_search(a, "diffcse-cached", 1e9, memory_max=256)["largest_batch"] == 256  # a per-configuration cap
    assert memory.parse_memory_max("4096") == (4096, {})
    assert memory.parse_memory_max("4096, diffcse-cached=1024") == (4096, {"diffcse-cached": 1024})
    for bad in ("x", "diffcse-cached=1024", "4096,diffcse-cached=0"):
        with pytest.raises(ValueError, match="--memory_max"):
            memory.parse_memory_max(bad)


def test_grad_cache_targets_table():
    report = {"ratios": {"infonce_cached_vs_infonce": 1.2}, "summary": {}, "batch_size": 256,
              "rss_sweep": {"infonce-cached": {"uncached": "infonce", "uncached_batch": 64, "uncached_mb": 1000.0,
                                               "cached_mb": {"256": 1100.0, "1024": 1300.0}}},
              "memory": {"infonce-cached": {"budget_mb": 4096, "largest_batch": 4096, "capped_at_memory_max": True},
                         "diffcse-cached": {"budget_mb": 4096, "largest_batch": 512, "capped_at_memory_max": False}}}
    rows = {t: (v, ok) for t, _, v, ok in bench_train.targets(report)}
    assert rows == {
        "issue 20: infonce-cached time per sentence vs infonce (batch 256)": ("1.200x", True),
        "issue 20: infonce-cached peak RSS at batch 1024 vs infonce at batch 64": ("1300 / 1000 MB = 1.30x", False),
        "issue 20: largest infonce-cached batch within 4096 MB": (">= 4096", True),
        "issue 20: largest diffcse-cached batch within 4096 MB": ("512", False),
    }


@pytest.mark.slow
def test_bench_train_subprocess_json(tiny_bert, tmp_path):
    """The real mode: one fresh process per configuration and repeat, plus the memory search; the runs' scratch
    folders and the workers' result files are gone afterwards."""
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model_name_or_path", str(tiny_bert), "--batch_size", "8", "--max_seq_length", "16",
         "--warmup", "1", "--steps", "1", "--repeat", "1", "--threads", "1", "--json", str(out),
         "--memory_budget_mb", "100000", "--memory_start", "8", "--memory_max", "16", "--memory_resolution", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=1200, env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in scratch.iterdir()) == []
    report = json.loads(out.read_text())
    _check_report(report, list(bench_train.DEFAULT_CONFIGS))
    assert report["memory"]["infonce"]["largest_batch"] >= 16 and report["memory"]["diffcse"]["largest_batch"] >= 16


def test_bench_train_cached_configurations(tiny_bert, tmp_path):
    """infonce-cached / diffcse-cached: the same steps with --mini_batch_size (bench_train.py's flag)."""
    out = tmp_path / "bench.json"
    code = bench_train.main([
        "--model_name_or_path", str(tiny_bert), "--batch_size", "8", "--max_seq_length", "16", "--warmup", "1",
        "--steps", "1", "--repeat", "1", "--threads", "1", "--in_process", "--json", str(out),
        "--configs", "infonce,infonce-cached,diffcse,diffcse-cached", "--mini_batch_size", "3",
        "--rss_batches", "4,8", "--section", "bench_grad_cache", "--update_md", str(tmp_path / "BENCHMARKS.md"),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"infonce-cached", "diffcse-cached"} <= set(report["summary"])
    assert "infonce_cached_vs_infonce" in report["ratios"]
    for config in ("infonce-cached", "diffcse-cached"):
        sweep = report["rss_sweep"][config]
        assert sweep["uncached"] == config.removesuffix("-cached") and sweep["uncached_batch"] == 4 and sweep["uncached_mb"] > 0
        assert set(sweep["cached_mb"]) == {"4", "8"} and all(v > 0 for v in sweep["cached_mb"].values())
    written = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- bench_grad_cache:start -->" in written and "## Big batches on little memory: --mini_batch_size (CPU)" in written
    assert "issue 20: infonce-cached time per sentence vs infonce (batch 8)" in written
    assert "peak RSS (MB) of diffcse-cached (--mini_batch_size 3) by batch: 4: " in written


def test_scratch_dir_is_removed_when_the_process_ends(tmp_path):
    code = ("import sys; sys.path.insert(0, 'scripts'); from bench.scratch import scratch_dir; "
            "p = scratch_dir('x_'); open(p + '/f', 'w').write('1'); print(p); raise SystemExit(sys.argv[1])")
    for status in ("0", "boom"):  # a normal exit and an error
        proc = subprocess.run([sys.executable, "-c", code, status], cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, TMPDIR=str(tmp_path)))
        made = proc.stdout.strip()
        assert made.startswith(str(tmp_path)) and not os.path.exists(made), (status, proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--rss_batches", "64,x"], "--rss_batches must be comma-separated batch sizes"),
    (["--rss_batches", "64,0", "--configs", "infonce-cached"], "--rss_batches must be batch sizes >= 1"),
    (["--rss_batches", "64"], "--rss_batches measures the *-cached configurations"),
    (["--mini_batch_size", "0"], "--mini_batch_size must be >= 1"),
    (["--memory_max", "infonce=64"], "--memory_max 'infonce=64' has no default cap"),
    (["--memory_configs", "infonce,bogus"], "--memory_configs: unknown configuration(s)"),
])
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(["--configs", "infonce", *flags] if "--configs" not in flags else flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bench_data_smoke(tiny_bert, tiny_corpus, tmp_path, capsys):
    """scripts/bench_data.py on a tiny model and tiny corpora: every figure and target line is there."""
    out, md = tmp_path / "data.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    code = bench_data.main(["--source", str(tiny_corpus), "--sizes", "300,600", "--workers", "1,2", "--train_steps", "1",
                            "--model", str(tiny_bert), "--max_seq_length", "16", "--threads", "1", "--json", str(out),
                            "--update_md", str(md)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["loading"]) == {"300", "600"} and report["loading"]["600"]["rows"] == 600
    assert set(report["throughput"]) == {"1", "2"} and all(v["sentences_per_s"] > 0 for v in report["throughput"].values())
    assert report["cache"]["size"] == 600 and report["cache"]["second_s"] > 0
    assert set(report["training"]) == {"300", "600"}
    assert {"loading_rss_largest_vs_smallest", "training_rss_largest_vs_smallest", "cache_second_vs_first"} <= set(report["ratios"])
    text = md.read_text()
    assert "<!-- bench_data:start -->" in text and "| target (issue 22) | threshold | measured | met |" in text
    assert bench_data.main(["--sizes", "10,x"]) == 2 and "comma-separated integers" in capsys.readouterr().err
    assert bench_data.main(["--source", str(tmp_path), "--sizes", "10"]) == 2 and "is not a file" in capsys.readouterr().err


def test_bench_gpu_smoke_runs_every_configuration(tmp_path):
    """scripts/bench_gpu.py --smoke (CPU, tiny BERT from a config): every configuration trains and is timed,
    ClusterNS with its clustering on, the table names the device; the CUDA parts say they were skipped."""
    out, md = tmp_path / "gpu.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    assert bench_gpu.main(["--smoke", "--json", str(out), "--update_md", str(md), "--senteval_dir", str(tmp_path / "none")]) == 0
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {f"{c}/b8/fp32" for c in ("infonce", "clusterns", "mixcse", "diffcse", "prompt", "st")}
    assert all(r["sentences_per_s"] > 0 for r in report["runs"].values())
    assert report["runs"]["clusterns/b8/fp32"]["clustering_active"] is True
    assert report["ratios"]["infonce_vs_st/b8/fp32"] > 0
    assert "skipped" in report["sts_suite"] and report["cuda_tests"] == {"skipped": "no CUDA device"}
    assert report["host_syncs"]["per_step"] == [0, 0, 0], report["host_syncs"]  # --nan_check deferred on the CPU
    assert "<!-- bench_gpu:start -->" in md.read_text() and "CPU (smoke)" in md.read_text()
    assert "host syncs per optimizer step (infonce, batch 64, outside the timed runs): [0, 0, 0]" in md.read_text()


def test_profile_step_attributes_the_step(tiny_bert, tmp_path):
    """scripts/profile_step.py on a tiny model: the categories cover the step (they sum to its time), the linear
    layers, the optimizer and the loss are found, and the section is written."""
    out, md = tmp_path / "profile.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    threads = torch.get_num_threads()
    assert profile_step.main(["--model", str(tiny_bert), "--batch_size", "8", "--warmup", "1", "--steps", "2",
                              "--threads", "1", "--json", str(out), "--update_md", str(md), "--markdown"]) == 0
    report = json.loads(out.read_text())
    ms = report["ms_per_step"]
    assert sum(ms.values()) == pytest.approx(report["step_ms"], rel=1e-6)
    for category in ("linear layers (mm/addmm/oneDNN)", "optimizer (AdamW)", "loss (logits, cross-entropy)", "gradient clipping"):
        assert ms.get(category, 0) > 0, category
    assert "<!-- profile_step:start -->" in md.read_text()
    # the caller's thread count is restored (a test process left at 1 thread made later resume tests inexact)
    assert torch.get_num_threads() == threads
    assert profile_step.main(["--steps", "0"]) == 2


def test_bench_scaling_smoke_in_process(tiny_bert, tmp_path, capsys):
    """Every group of the scaling benchmark runs (tiny model, one step) and its report holds what the tables print."""
    import bench_scaling

    out = tmp_path / "scaling.json"
    code = bench_scaling.main(["--model_name_or_path", str(tiny_bert), "--batches", "4,8", "--lengths", "8,16", "--ks", "2,4",
                               "--generator_layers", "1", "--warmup", "1", "--steps", "1", "--repeat", "1", "--threads", "1",
                               "--in_process", "--json", str(out), "--markdown"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["batch"]) == {"4", "8"} and set(report["length"]) == {"8", "16"}
    assert report["batch"]["8"]["flop_per_step"] > report["batch"]["4"]["flop_per_step"] > 0
    assert report["length"]["16"]["tokens_per_step"] > report["length"]["8"]["tokens_per_step"]  # the long lines fill 16
    assert set(report["clusterns"]) == {"2", "4"} and all(c["ratio"] > 0 for c in report["clusterns"].values())
    assert report["diffcse"]["generator_layers"] == 1 and "1-layer" in report["diffcse"]["generator"]
    printed = capsys.readouterr().out
    assert "| batch 8 |" in printed and "| length 16 |" in printed and "| K = 4 |" in printed and "generator of 1 layers" in printed


def test_bench_scaling_refuses_bad_lists(capsys):
    import bench_scaling

    with pytest.raises(SystemExit, match="--batches takes comma-separated integers"):
        bench_scaling.main(["--batches", "64,big"])
    with pytest.raises(SystemExit) as err:
        bench_scaling.main(["--generator_layers", "0"])
    assert err.value.code == 2 and "--generator_layers must be >= 1" in capsys.readouterr().err


def test_bench_encode_times_both_libraries_on_both_sets(tiny_bert, tmp_path, capsys):
    """scripts/bench_encode.py on a tiny BERT: both sets built (long lines joined from short ones when the source has
    none), the three encoders timed, their vectors equal, the section written; bad flags exit 2."""
    source = tmp_path / "lines.txt"
    source.write_text("\n".join(["a man is playing a guitar .", "two dogs run in the park .", "the cat sleeps ."] * 10) + "\n")
    out, md = tmp_path / "encode.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    assert bench_encode.main(["--model_name_or_path", str(tiny_bert), "--source", str(source), "--count", "12",
                              "--batch_size", "4", "--repeat", "1", "--json", str(out), "--update_md", str(md)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sets"]) == {"short", "long"}
    long_set = report["sets"]["long"]
    assert long_set["sentences"] == 12 and 50 <= long_set["mean_tokens"] <= 100
    assert all(r["st_s"] > 0 and r["plain_s"] > 0 and r["packed_s"] > 0 and r["torch_linear_s"] > 0 and r["max_abs_diff"] < 1e-4 for r in report["sets"].values())
    assert "<!-- bench_encode:start -->" in md.read_text() and "packed, F.linear vs ST" in md.read_text()
    assert bench_encode.main(["--count", "0"]) == 2 and "must be positive" in capsys.readouterr().err
    assert bench_encode.main(["--source", str(tmp_path)]) == 2 and "is not a file" in capsys.readouterr().err
