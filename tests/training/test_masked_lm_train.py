"""--do_mlm through train.py with every objective: the MLM loss is logged, its LM head is checkpointed and restored
on resume, --mlm_clone_inputs defaults to the objective's original, and MLM flags without --do_mlm stop at start-up."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from clusterns.cli.train import train_main
from clusterns.training.checkpoints import load_contrastive_state
from conftest import with_mlm_head

OBJECTIVE_FLAGS = {
    "infonce": [],
    "clusterns": ["--kmeans", 2, "--kmean_cosine", 1.0],
    "mixcse": ["--lambdas", 0.2],
    "diffcse": ["--generator_name", "{generator}", "--masking_ratio", 0.3],
}
CLONES_BY_DEFAULT = {"infonce": True, "clusterns": False, "mixcse": False, "diffcse": True}


@pytest.fixture(scope="module")
def mlm_checkpoint(tiny_bert, tmp_path_factory):
    from transformers import AutoConfig, AutoModelForMaskedLM

    root = tmp_path_factory.mktemp("mlm")
    folder = with_mlm_head(tiny_bert, root / "bert-mlm")
    config = AutoConfig.from_pretrained(tiny_bert)
    config.num_hidden_layers = 1
    torch.manual_seed(1)
    generator = root / "generator"
    AutoModelForMaskedLM.from_config(config).save_pretrained(generator)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / name).exists():
            (generator / name).write_bytes((tiny_bert / name).read_bytes())
    return folder, generator


def argv(model, corpus, out, objective, generator, *extra):
    flags = [str(generator) if f == "{generator}" else f for f in OBJECTIVE_FLAGS[objective]]
    return [str(a) for a in [
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--objective", objective, *flags,
        "--do_mlm", "--per_device_train_batch_size", 8, "--max_steps", 2, "--use_cpu", "--logging_steps", 1,
        "--save_steps", 2, "--pooler_type", "cls", "--seed", 42, "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]]


@pytest.mark.parametrize("objective", list(OBJECTIVE_FLAGS))
def test_do_mlm_with_every_objective(objective, mlm_checkpoint, tiny_corpus, tmp_path):
    model, generator = mlm_checkpoint
    out = tmp_path / "run"
    train_main(argv(model, tiny_corpus, out, objective, generator))
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all(h["mlm/loss"] > 0 for h in logged)
    run = json.loads((out / "training_args.json").read_text())
    assert run["masked_lm"]["do_mlm"] and run["masked_lm"]["mlm_clone_inputs"] is CLONES_BY_DEFAULT[objective]
    # The LM head is in the checkpoint (for resume), not in the exported model folder.
    head = load_file(str(out / "checkpoint-2" / "masked_lm.safetensors"))
    assert "head.predictions.transform.dense.weight" in head


def test_resume_restores_the_lm_head(mlm_checkpoint, tiny_corpus, tmp_path):
    model, generator = mlm_checkpoint
    out = tmp_path / "run"
    train_main(argv(model, tiny_corpus, out, "infonce", generator, "--save_steps", 1))
    straight = load_file(str(out / "checkpoint-2" / "masked_lm.safetensors"))
    first = load_file(str(out / "checkpoint-1" / "masked_lm.safetensors"))
    assert not torch.equal(first["head.predictions.transform.dense.weight"], straight["head.predictions.transform.dense.weight"])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-1", resumed / "checkpoint-1")
    train_main(argv(model, tiny_corpus, resumed, "infonce", generator, "--save_steps", 1,
                    "--resume_from_checkpoint", resumed / "checkpoint-1"))
    again = load_file(str(resumed / "checkpoint-2" / "masked_lm.safetensors"))
    for key, value in straight.items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_checkpoint_without_the_head_is_refused_for_an_mlm_run(mlm_checkpoint, tiny_corpus, tmp_path):
    from clusterns.training.run import build_run

    model, generator = mlm_checkpoint
    plain = tmp_path / "plain"
    train_main([a for a in argv(model, tiny_corpus, plain, "infonce", generator) if a != "--do_mlm"])
    run = build_run(argv(model, tiny_corpus, tmp_path / "mlm", "infonce", generator))
    with pytest.raises(FileNotFoundError, match="masked_lm.safetensors"):
        load_contrastive_state(run.model, str(plain / "checkpoint-2"))


@pytest.mark.parametrize("flag, value", [("--mlm_weight", "0.5"), ("--mlm_probability", "0.3"), ("--mlm_clone_inputs", "true")])
def test_mlm_flags_without_do_mlm_stop(flag, value, mlm_checkpoint, tiny_corpus, tmp_path, capsys):
    model, generator = mlm_checkpoint
    args = [a for a in argv(model, tiny_corpus, tmp_path / "run", "infonce", generator) if a != "--do_mlm"] + [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        train_main(args)
    assert exit_info.value.code == 2
    assert f"{flag} only apply with --do_mlm" in capsys.readouterr().err
