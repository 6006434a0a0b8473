"""download_dataset.sh: --from copies/links a mirror and verifies it; missing pieces are listed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "SentEval" / "data" / "downstream" / "download_dataset.sh"


def mirror_root() -> Path:
    root = Path(os.environ.get("CLUSTERNS_DATA_MIRROR", REPO.parent / "shared" / "data"))
    if not (root / "senteval" / "STS").is_dir():
        pytest.skip(f"data mirror not found at {root}")
    return root


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_link_mirror_and_korsts(tmp_path):
    root = mirror_root()
    r = run("--from", str(root / "senteval"), "--link", "--korsts-from", str(root / "korsts"), "--dest", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "SentEval data OK" in r.stdout
    assert (tmp_path / "STS").is_symlink()
    assert (tmp_path / "KorSTS" / "sts-dev.tsv").exists()


def test_copy_then_damage_is_reported(tmp_path):
    root = mirror_root()
    dest = tmp_path / "d"
    dest.mkdir()
    # copy only the STS part to keep the test fast
    shutil.copytree(root / "senteval" / "STS", dest / "STS")
    shutil.copytree(root / "senteval" / "SICK", dest / "SICK")
    r = run("--verify-only", "--sts-only", "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    (dest / "STS" / "STS13-en-test" / "STS.gs.FNWN.txt").unlink()
    trial = dest / "SICK" / "SICK_trial.txt"
    trial.write_text("".join(trial.read_text().splitlines(keepends=True)[:50]))
    r = run("--verify-only", "--dest", str(dest))
    assert r.returncode == 1
    assert "STS/STS13-en-test/STS.gs.FNWN.txt" in r.stderr
    assert "SICK/SICK_trial.txt: 49 rows, expected 500" in r.stderr
    assert "missing file: MR/rt-polarity.pos" in r.stderr  # transfer tasks verified unless --sts-only
    assert "--from DIR" in r.stderr


def test_bad_arguments(tmp_path):
    r = run("--from", str(tmp_path / "nope"), "--dest", str(tmp_path))
    assert r.returncode != 0 and "no such folder" in r.stderr
    r = run("--bogus")
    assert r.returncode != 0 and "unknown argument" in r.stderr
