"""pyproject.toml: metadata, packages and console scripts (fast); `pip install -e .` in a throwaway venv (slow)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

SCRIPTS = {
    "clusterns-train": "clusterns.cli.train:train_cli",
    "clusterns-evaluate": "clusterns.cli.evaluate:evaluate_cli",
    "clusterns-export-st": "clusterns.cli.export:main",
    "clusterns-model-card": "clusterns.cli.model_card:main",
    "clusterns-results-table": "clusterns.cli.model_card:results_table_main",
}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_metadata_and_packages(pyproject):
    project = pyproject["project"]
    assert project["name"] == "clusterns" and project["requires-python"].startswith(">=3.10")
    assert (REPO / project["readme"]).is_file()
    extras = " ".join(project["optional-dependencies"]["ecosystem"])
    for dist in ("sentence-transformers", "tensorboard", "matplotlib"):
        assert dist in extras
    assert not any("mteb" in d for group in project["optional-dependencies"].values() for d in group)
    setuptools = pyproject["tool"]["setuptools"]
    dirs = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        folder = REPO / dirs.get(package, package.replace(".", "/"))
        assert (folder / "__init__.py").is_file() or package == "clusterns", package
        assert folder.is_dir(), package
    # every subpackage is listed: a missing one still imports from a checkout or an editable install, but
    # not from a normal `pip install .`
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "clusterns").rglob("__init__.py")}
    found |= {"senteval." + ".".join(init.parent.relative_to(REPO / "SentEval" / "senteval").parts)
              for init in (REPO / "SentEval" / "senteval").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    assert found <= set(setuptools["packages"]), sorted(found - set(setuptools["packages"]))


def test_console_scripts_resolve(pyproject):
    scripts = pyproject["project"]["scripts"]
    assert scripts == SCRIPTS
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


@pytest.mark.parametrize("target", ["clusterns.cli.export:main", "clusterns.cli.model_card:main", "clusterns.cli.model_card:results_table_main"])
def test_entry_points_help(target, capsys):
    module, _, name = target.partition(":")
    with pytest.raises(SystemExit) as info:
        getattr(importlib.import_module(module), name)(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_evaluate_entry_point_is_packaged(monkeypatch, capsys):
    from clusterns.cli.evaluate import evaluate_cli

    monkeypatch.setattr(sys, "argv", ["clusterns-evaluate", "--help"])
    with pytest.raises(SystemExit) as info:
        evaluate_cli()
    assert info.value.code == 0
    assert "--model_name_or_path" in capsys.readouterr().out


@pytest.mark.slow
def test_editable_install_in_a_venv(tmp_path):
    """pip install -e . into a venv that sees the system packages; every console script answers --help."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    # The venv's bundled setuptools (ensurepip's, often without bdist_wheel) would shadow the system one that
    # --no-build-isolation should use (offline: no build environment is downloaded).
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True, env=env)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the installed package must be what is imported
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import clusterns, senteval; print(clusterns.__path__[0]); print(senteval.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert str(REPO) in where.stdout
    for script in SCRIPTS:
        done = subprocess.run([str(bin_dir / script), "--help"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
        assert done.returncode == 0, (script, done.stdout[-2000:], done.stderr[-2000:])
        assert "usage" in done.stdout.lower(), script
    # the top-level scripts keep working beside the install
    done = subprocess.run([str(python), str(REPO / "train.py"), "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "--objective" in done.stdout


def test_wheel_install_and_every_console_script_in_a_fresh_venv(tiny_bert, tiny_corpus, tiny_sts_dir, tmp_path):
    """`pip install .` (a wheel, not editable) into a fresh venv on top of the installed dependencies, offline; from
    another folder every console script answers --help, and each does one real job on a tiny model: train,
    evaluate, export to sentence-transformers, write the model card, collect the results table."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_INDEX="1", PYTHONPATH="",
               VIRTUAL_ENV=str(venv), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(REPO)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import clusterns, senteval; print(clusterns.__file__); print(senteval.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.returncode == 0 and str(venv) in where.stdout and str(REPO) not in where.stdout, where  # the wheel's copy

    def script(name, *args):
        done = subprocess.run([str(bin_dir / name), *map(str, args)], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
        assert done.returncode == 0, (name, args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    for name in SCRIPTS:
        assert "usage" in script(name, "--help").stdout.lower(), name
    out = elsewhere / "run"
    script("clusterns-train", "--model_name_or_path", tiny_bert, "--train_file", tiny_corpus, "--output_dir", out,
           "--per_device_train_batch_size", 8, "--max_steps", 2, "--use_cpu", "--report_to", "none", "--pooler_type", "avg")
    assert (out / "model.safetensors").exists()
    result = elsewhere / "eval.json"
    printed = script("clusterns-evaluate", "--model_name_or_path", out, "--mode", "dev", "--task_set", "na", "--tasks", "STSBenchmark",
                     "--data_dir", tiny_sts_dir, "--device", "cpu", "--output_json", result).stdout
    assert "STSBenchmark" in printed and result.exists()
    (out / "modules.json").unlink()
    script("clusterns-export-st", out)
    assert (out / "modules.json").exists()
    script("clusterns-model-card", out, "--eval_json", result)
    assert "STS" in (out / "README.md").read_text()
    table = script("clusterns-results-table", result).stdout
    assert "STS-B" in table or "STSBenchmark" in table, table
