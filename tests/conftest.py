"""Shared fixtures: tiny random BERT / RoBERTa checkpoints built on the fly, the data mirror, the golden vectors."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "SentEval"))

WORDS = (
    "a an the man woman dog cat child children is are was were playing plays play guitar piano ball "
    "running runs run eating eats food on in at with and of to for by from two three people group street "
    "water riding horse bike car red blue green white black small big young old sitting standing walking "
    "talking cutting slicing onion tomato potato dancing singing song music sky cloud train bus plane flying "
    "swimming jumping kid girl boy person outside inside near under over table chair book reading writing ."
).split()


def data_mirror() -> Path:
    """The offline copy of the evaluation data (CI passes it beside the checkout)."""
    return Path(os.environ.get("CLUSTERNS_DATA_MIRROR", REPO.parent / "shared" / "data"))


def require_mirror(*relative: str) -> Path:
    """data_mirror()/relative for a fidelity gate: skipped without the mirror on a developer's machine, but a failure
    where CLUSTERNS_DATA_MIRROR names it (as .ci/run does), so CI never passes a gate by skipping it."""
    path = data_mirror().joinpath(*relative)
    if not path.exists():
        message = f"data mirror path not found: {path}"
        if os.environ.get("CLUSTERNS_DATA_MIRROR"):
            pytest.fail(message + " (CLUSTERNS_DATA_MIRROR is set, so this fidelity gate must run)")
        pytest.skip(message)
    return path


def golden_dir() -> Path:
    return Path(os.environ.get("CLUSTERNS_GOLDEN", REPO.parent / "shared" / "golden"))


def load_golden(name: str) -> dict:
    path = golden_dir() / f"{name}.json"
    if not path.exists():
        pytest.skip(f"golden vectors not found at {path}")
    return json.loads(path.read_text())


def golden_case(name: str, case: str) -> dict:
    for c in load_golden(name)["cases"]:
        if c["name"] == case:
            return c
    raise KeyError(case)


def _write_wordpiece_vocab(path: Path) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    pieces = ["##" + c for c in letters]
    vocab = specials + sorted(set(WORDS)) + [c for c in letters if c not in WORDS] + pieces
    path.write_text("\n".join(vocab) + "\n")


def with_mlm_head(encoder_dir: Path, out: Path, seed: int = 3) -> Path:
    """A copy of a tiny checkpoint saved as AutoModelForMaskedLM (backbone + a pre-training head of its own weights)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(seed)
    shutil.copytree(encoder_dir, out)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(encoder_dir)).save_pretrained(out)
    return out


def build_tiny_bert(path: Path, hidden_dropout: float = 0.1, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    _write_wordpiece_vocab(path / "vocab.txt")
    # from_pretrained on a folder with vocab.txt works on transformers 4.x and 5.x alike.
    tok = BertTokenizerFast.from_pretrained(str(path), do_lower_case=True)
    tok.model_max_length = 128
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=128, hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=hidden_dropout,
    )
    BertModel(config).save_pretrained(path)
    return path


def build_tiny_roberta(path: Path, hidden_dropout: float = 0.1, seed: int = 0) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS)] * 3 + [w for w in WORDS]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(path))
    tok = RobertaTokenizerFast.from_pretrained(str(path))
    tok.model_max_length = 128
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=130, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=hidden_dropout,
        type_vocab_size=1,
    )
    RobertaModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small English corpus: sentences of the tiny vocabulary."""
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(200):
        n = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(WORDS[:-1]) for _ in range(n)) + " .")
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_sts_dir(tmp_path_factory) -> Path:
    """A miniature SentEval 'downstream' folder with STS-B dev and SICK trial, for in-training evaluation."""
    import random

    rng = random.Random(1)
    root = tmp_path_factory.mktemp("downstream")
    (root / "STS" / "STSBenchmark").mkdir(parents=True)
    (root / "SICK").mkdir(parents=True)

    def sent():
        return " ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(3, 9))) + " ."

    rows = [("main-captions", "MSRvid", "2012test", f"{i:04d}", f"{rng.uniform(0, 5):.3f}", sent(), sent()) for i in range(40)]
    for split in ("train", "dev", "test"):
        (root / "STS" / "STSBenchmark" / f"sts-{split}.csv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    sick = [header] + [f"{i}\t{sent()}\t{sent()}\t{rng.uniform(1, 5):.1f}\tNEUTRAL" for i in range(40)]
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        (root / "SICK" / name).write_text("\r\n".join(sick) + "\r\n")
    return root


def sentences(word, n, rng):
    """n synthetic sentences that end in `word` (separable transfer data for the harness tests)."""
    fillers = "the a movie film plot actor scene story one it was is".split()
    return [" ".join(list(rng.choice(fillers, size=4)) + [word]) for _ in range(n)]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """24 sentences: 3 batches of 8 per epoch, so 8 steps span 3 epochs and step 4 is mid-epoch."""
    import random

    rng = random.Random(3)
    lines = [" ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(3, 10))) + " ." for _ in range(24)]
    path = tmp_path_factory.mktemp("resume-corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
