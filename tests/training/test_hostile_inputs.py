"""Hostile inputs through train.py and the loaders: each works or stops with a message naming the file.

Unit-level corpus cases live in tests/test_data.py (blank lines and mixed line endings, the 1 MB
line, NUL bytes, invalid UTF-8, csv quotes with embedded newlines) and the SentEval parser's own
cases in tests/test_senteval_sts.py; here: the same files through train.py, empty / non-numeric
SentEval dev files, incomplete checkpoints, and files that would run code if unpickled or imported."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from clusterns.cli.train import train_main


def base(model, corpus, out, *extra):
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 4,
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", 0, *extra,
    )]


def exit_message(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


class RunsCode:
    """Unpickling this object runs `touch marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- corpora ---------------------------------------------------------------------------------------
def test_train_on_blank_lines_mixed_endings_and_a_megabyte_line(tiny_bert, tmp_path, caplog):
    corpus = tmp_path / "hostile.txt"
    corpus.write_bytes(
        b"a man is playing a guitar .\r\n\r\n   \n" + b"the dog runs " * 80_000 + b"\r"
        + b"a woman is slicing an onion .\rtwo people are walking\n\n" + b"a child reads a book ."
    )
    assert corpus.stat().st_size > 1_000_000
    out = tmp_path / "run"
    results = train_main(base(tiny_bert, corpus, out, "--max_steps", 1, "--max_seq_length", 32, "--per_device_train_batch_size", 5))
    assert results["train_loss"] > 0 and (out / "model.safetensors").exists()
    assert "skipped 3 blank line(s); 5 sentences kept" in caplog.text


@pytest.mark.parametrize("data, needle", [
    (b"fine line\nbad \xc3\x28 byte\n", "hostile.txt:2: invalid UTF-8"),
    (b"fine line\nstill fine\r\nnul\x00inside\n", "hostile.txt:3: NUL byte"),
])
def test_train_refuses_undecodable_corpus_naming_file_and_line(tiny_bert, tmp_path, capsys, data, needle):
    corpus = tmp_path / "hostile.txt"
    corpus.write_bytes(data)
    assert needle in exit_message(base(tiny_bert, corpus, tmp_path / "out"), capsys)


# ---- SentEval dev files --------------------------------------------------------------------------
def copy_sts(tiny_sts_dir, tmp_path):
    root = tmp_path / "downstream"
    shutil.copytree(tiny_sts_dir, root)
    return root


@pytest.mark.parametrize("relpath", ["STS/STSBenchmark/sts-dev.csv", "SICK/SICK_trial.txt"])
def test_empty_senteval_dev_file_is_refused(tiny_sts_dir, tmp_path, relpath):
    from senteval.utils import DataFormatError

    from clusterns.training.dev_evaluator import SentEvalDevEvaluator

    root = copy_sts(tiny_sts_dir, tmp_path)
    (root / relpath).write_text("" if relpath.endswith(".csv") else "pair_ID\tsentence_A\tsentence_B\trelatedness_score\n")
    with pytest.raises(DataFormatError, match=os.path.basename(relpath)):
        SentEvalDevEvaluator(str(root))


def test_non_numeric_gold_score_stops_train_with_file_and_line(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path, capsys):
    root = copy_sts(tiny_sts_dir, tmp_path)
    dev = root / "STS" / "STSBenchmark" / "sts-dev.csv"
    lines = dev.read_text().splitlines()
    fields = lines[2].split("\t")
    fields[4] = "n/a"
    lines[2] = "\t".join(fields)
    dev.write_text("\n".join(lines) + "\n")
    err = exit_message(base(tiny_bert, tiny_corpus, tmp_path / "out", "--eval_strategy", "steps", "--eval_data_dir", root), capsys)
    assert "sts-dev.csv:3: non-numeric gold score 'n/a'" in err


# ---- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_run(tiny_bert, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-ckpt") / "run"
    train_main(base(tiny_bert, tiny_corpus, out, "--max_steps", 2, "--save_steps", 2, "--seed", 3))
    return out


def resume_copy(checkpoint_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(checkpoint_run / "checkpoint-2", out / "checkpoint-2")
    return out, out / "checkpoint-2"


@pytest.mark.parametrize("missing", ["config.json", "clusterns_config.json", "trainer_state.json"])
def test_resume_from_checkpoint_missing_its_config(tiny_bert, tiny_corpus, checkpoint_run, tmp_path, capsys, missing):
    out, ckpt = resume_copy(checkpoint_run, tmp_path)
    (ckpt / missing).unlink()
    err = exit_message(base(tiny_bert, tiny_corpus, out, "--max_steps", 4, "--resume_from_checkpoint", ckpt), capsys)
    assert f"--resume_from_checkpoint '{ckpt}' is not a complete training checkpoint: missing {missing}" in err
    # `auto` passes over it: nothing complete is left, so it is a fresh start into a folder holding
    # another run's files, which is refused as usual.
    err = exit_message(base(tiny_bert, tiny_corpus, out, "--max_steps", 4, "--resume_from_checkpoint", "auto"), capsys)
    assert "--overwrite_output_dir" in err


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"])
def test_tampered_pickle_in_checkpoint_is_not_executed(tiny_bert, tiny_corpus, checkpoint_run, tmp_path, capsys, name):
    """optimizer.pt / scheduler.pt / scaler.pt / rng_state.pth are read weights-only; a file that is not is refused
    before HF reads it, naming the file and the reason (torch's own error suggested weights_only=False)."""
    out, ckpt = resume_copy(checkpoint_run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": RunsCode(marker)}, ckpt / name)
    err = exit_message(base(tiny_bert, tiny_corpus, out, "--max_steps", 4, "--resume_from_checkpoint", ckpt), capsys)
    assert f"error: {ckpt / name} was refused for safety" in err and "weights_only=False" not in err
    assert not marker.exists() and not (out / "checkpoint-4").exists()


def test_fp16_checkpoint_resumed_without_a_grad_scaler(tiny_bert, tiny_corpus, checkpoint_run, tmp_path, capsys):
    """A scaler.pt (an --fp16 run's grad scaler) resumed on the CPU: a clear line instead of HF's AttributeError."""
    out, ckpt = resume_copy(checkpoint_run, tmp_path)
    torch.save({"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0},
               ckpt / "scaler.pt")
    err = exit_message(base(tiny_bert, tiny_corpus, out, "--max_steps", 4, "--resume_from_checkpoint", ckpt), capsys)
    assert "was trained with --fp16 (it holds scaler.pt" in err and "resume with the precision flags" in err


def test_pickle_only_backbone_is_refused_and_never_unpickled(tiny_bert, tiny_corpus, tmp_path, capsys):
    model = tmp_path / "bin-model"
    shutil.copytree(tiny_bert, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": RunsCode(marker)}, model / "pytorch_model.bin")
    with pytest.raises(SystemExit) as refused:  # refused without --trust_pickle, with a one-line message
        train_main(base(model, tiny_corpus, tmp_path / "out", "--max_steps", 1))
    assert refused.value.code == 2 and "--trust_pickle" in capsys.readouterr().err
    with pytest.raises(Exception):  # --trust_pickle still unpickles with weights_only=True
        train_main(base(model, tiny_corpus, tmp_path / "out2", "--max_steps", 1, "--trust_pickle"))
    assert not marker.exists()


def test_remote_code_in_model_folder_is_never_run(tiny_bert, tiny_corpus, tmp_path):
    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_bert, model)
    marker = tmp_path / "pwned"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig as EvilConfig, BertModel as EvilModel\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilConfig", None]}
    (model / "config.json").write_text(json.dumps(config))
    results = train_main(base(model, tiny_corpus, tmp_path / "out", "--max_steps", 1))
    assert results["train_loss"] > 0
    assert not marker.exists()
