"""One run per --output_dir, with real processes: a second run on a live run's folder is refused (exit 2, naming the
holder's PID, host and start time) and the first completes intact; the lock of a SIGKILLed run is stale and the
next run takes it over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clusterns.cli.train import train_main
from clusterns.training.run_lock import LOCK_NAME, OutputDirLock, OutputDirLockedError
from conftest import REPO


def argv(model, corpus, out, steps):
    return [str(a) for a in (
        "--model_name_or_path", model, "--train_file", corpus, "--output_dir", out, "--per_device_train_batch_size", 4,
        "--max_steps", steps, "--save_steps", 500, "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
        "--logging_steps", 500, "--seed", 1,
    )]


def start(args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_holder(out, proc, timeout=120.0) -> dict:
    deadline = time.time() + timeout
    lock = out / LOCK_NAME
    while time.time() < deadline:
        if lock.exists() and lock.read_text().strip():
            return json.loads(lock.read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def test_second_run_is_refused_and_the_first_completes(tiny_bert, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    steps = 2000  # long enough (~15 s) for the other two processes to start while it runs
    first = start(argv(tiny_bert, tiny_corpus, out, steps))
    holder = wait_for_holder(out, first)
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    # the same flags with --overwrite_output_dir, and a resume of the live run: both refused before touching it
    others = [start(argv(tiny_bert, tiny_corpus, out, steps) + extra)
              for extra in (["--overwrite_output_dir"], ["--resume_from_checkpoint", "auto"])]
    for proc in others:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        assert f"is in use by another run (pid {first.pid} on host {socket.gethostname()}, started {holder['started']})" in err
        assert "Traceback" not in err
    assert first.poll() is None, "the first run ended before the others were refused: the test proved nothing"
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps and (out / "model.safetensors").exists()
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all(json.loads((p / "trainer_state.json").read_text())["global_step"] == int(p.name.split("-")[1])
                               for p in checkpoints)
    assert (out / LOCK_NAME).read_text() == ""  # released: no holder recorded


def test_lock_of_a_killed_run_is_taken_over(tiny_bert, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    victim = start(argv(tiny_bert, tiny_corpus, out, 100000))
    wait_for_holder(out, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == victim.pid  # the dead holder's record is still there
    train_main(argv(tiny_bert, tiny_corpus, out, 2) + ["--overwrite_output_dir"])  # stale: taken over
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_lock_in_one_process(tmp_path):
    with OutputDirLock(str(tmp_path / "o")):
        with pytest.raises(OutputDirLockedError, match=rf"pid {os.getpid()} on host"):
            OutputDirLock(str(tmp_path / "o")).acquire()
    with OutputDirLock(str(tmp_path / "o")):  # released by the first
        pass
    OutputDirLock(str(tmp_path / "x"), enabled=False).acquire()  # non-main DDP ranks take no lock
    assert not (tmp_path / "x").exists()
