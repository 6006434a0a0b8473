"""Single-process pieces of the multi-GPU path: the DataParallel guard (device count monkeypatched), the
gradient scaling of the gather, the TF32 default. The multi-process equivalence is test_ddp_equivalence.py."""
from __future__ import annotations

import pytest
import torch
import transformers

from clusterns import precision
from clusterns.training.distributed import (
    check_no_data_parallel,
    data_parallel_message,
    gather_with_local_grad,
    scale_grad,
    torchrun_command,
)


@pytest.fixture
def four_gpus(monkeypatch):
    """HF's view of one process with 4 visible GPUs (it would wrap the model in nn.DataParallel)."""
    monkeypatch.setattr(transformers.TrainingArguments, "n_gpu", property(lambda self: 4))


def test_train_refuses_data_parallel_and_shows_torchrun(four_gpus, tiny_bert, tiny_corpus, tmp_path, capsys):
    from clusterns.cli.train import train_main

    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(tiny_corpus), "--output_dir", str(tmp_path / "out"),
            "--per_device_train_batch_size", "64", "--objective", "clusterns", "--report_to", "none"]
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "DataParallel" in err and "1/4 of the batch" in err
    assert f"torchrun --nproc_per_node 4 train.py --model_name_or_path {tiny_bert}" in err
    assert "--per_device_train_batch_size 64" in err and "CUDA_VISIBLE_DEVICES=0 python train.py" in err
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def test_trainer_refuses_data_parallel(four_gpus, tiny_bert, tmp_path):
    """Library use (ContrastiveTrainer built directly) is guarded too."""
    from clusterns.training.arguments import ContrastiveTrainingArguments, ModelArguments
    from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
    from clusterns.training.model import ContrastiveModel
    from clusterns.objectives.infonce import InfoNCEObjective
    from clusterns.training.trainer import ContrastiveTrainer

    encoder = SentenceEncoder.from_backbone(str(tiny_bert), EncoderConfig(pooler_type="cls", projector="simcse_mlp"))
    model = ContrastiveModel(encoder, InfoNCEObjective(ModelArguments(), None, encoder))
    args = ContrastiveTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 4"):
        ContrastiveTrainer(model=model, args=args)


def test_guard_helpers():
    check_no_data_parallel(0)
    check_no_data_parallel(1)
    with pytest.raises(ValueError, match="nn.DataParallel"):
        check_no_data_parallel(2, ["--output_dir", "out dir"])
    assert torchrun_command(2, ["--output_dir", "out dir"]) == "torchrun --nproc_per_node 2 train.py --output_dir 'out dir'"
    assert "global batch is 8 x that" in data_parallel_message(8, [])


def test_scale_grad_changes_the_gradient_not_the_value():
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_grad(x, 4.0)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, 4.0 * torch.arange(4.0).expand(3, 4))
    z = torch.randn(2)
    assert scale_grad(z, 3.0) is z and scale_grad(x, 1) is x


def test_gather_is_identity_in_one_process():
    x = torch.randn(5, 2, 8, requires_grad=True)
    assert gather_with_local_grad(x) is x
    assert gather_with_local_grad(x, scale_local_grad=True) is x  # world size 1: nothing to scale


def test_tf32_default(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "set_cuda_tf32", calls.append)
    monkeypatch.setattr(precision, "cuda_tf32_supported", lambda: True)
    assert precision.configure_tf32(None) is True and calls == [True]  # default: on where supported
    assert precision.configure_tf32(False) is False and calls == [True]  # --tf32 false: HF applied it; untouched
    monkeypatch.setattr(precision, "cuda_tf32_supported", lambda: False)
    assert precision.configure_tf32(None) is False and calls == [True]  # CPU / pre-Ampere: nothing


def test_auto_mixed_precision_flag_cases():
    f = precision.auto_mixed_precision_flag
    assert f(False, False, False, cuda_available=True, bf16_supported=True) == "--bf16"  # Ampere+
    assert f(False, False, False, cuda_available=True, bf16_supported=False) == "--fp16"  # older GPUs
    assert f(False, False, False, cuda_available=False) is None  # CPU machine
    assert f(False, False, True, cuda_available=True, bf16_supported=True) is None  # --use_cpu
    assert f(True, False, False, cuda_available=True, bf16_supported=True) is None  # --fp16 chosen
    assert f(False, True, False, cuda_available=True, bf16_supported=False) is None  # --bf16 chosen


def test_parse_args_adds_the_auto_flag_unless_switched_off(monkeypatch, tmp_path):
    from clusterns.training import run as cli

    seen = []

    def fake(fp16, bf16, use_cpu):
        seen.append((fp16, bf16, use_cpu))
        return None if (fp16 or bf16 or use_cpu) else "--bf16"

    monkeypatch.setattr(cli, "auto_mixed_precision_flag", fake)
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True, raising=False)
    argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    try:
        *_, training_args = cli.parse_args(argv)
    except ValueError as err:  # this transformers refuses --bf16 without a GPU: the flag was still added
        assert "bf16" in str(err).lower(), err
    else:
        assert training_args.bf16 is True
    assert seen == [(False, False, False)]
    seen.clear()
    *_, training_args = cli.parse_args(argv + ["--auto_mixed_precision", "false"])
    assert seen == [] and training_args.bf16 is False and training_args.fp16 is False
    *_, training_args = cli.parse_args(argv + ["--use_cpu"])
    assert seen == [(False, False, True)] and training_args.bf16 is False


def test_fp32_region_turns_tf32_off_and_restores(monkeypatch):
    state = {"on": True}
    monkeypatch.setattr(precision, "cuda_tf32_enabled", lambda: state["on"])
    monkeypatch.setattr(precision, "set_cuda_tf32", lambda on: state.update(on=on))
    with precision._no_cuda_tf32():
        assert state["on"] is False
    assert state["on"] is True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = torch.randn(4, 4)
        with precision.fp32_region("cpu"):
            assert (a @ a).dtype == torch.float32
        assert (a @ a).dtype == torch.bfloat16


def test_restart_process_group_reads_the_backend_flags(monkeypatch):
    from clusterns.training import argv as A
    from clusterns.training import distributed as D

    assert A.flag_value(["--ddp_backend", "gloo", "--x"], "ddp_backend") == "gloo"
    assert A.flag_value(["--ddp_timeout=60"], "ddp_timeout") == "60"
    assert A.flag_value(["--other"], "ddp_backend") is None
    assert A.switch_given(["--use_cpu"], "use_cpu") and A.switch_given(["--use_cpu", "--x"], "use_cpu")
    assert A.switch_given(["--use_cpu=true"], "use_cpu") and not A.switch_given(["--use_cpu", "false"], "use_cpu")
    assert not A.switch_given(["--use_cpu=False"], "use_cpu") and not A.switch_given([], "use_cpu")
    assert A.switch_given(["--use_cpu", "yes"], "use_cpu") and not A.switch_given(["--use_cpu", "n"], "use_cpu")
    assert A.switch_given(["--use_cpu", "out/dir"], "use_cpu")  # a positional after the switch is not its value
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert D.init_restarted_process_group(["--use_cpu"]) is False  # a first launch: nothing to do
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.delenv("RANK", raising=False)
    assert D.init_restarted_process_group(["--use_cpu"]) is False  # not under torchrun
