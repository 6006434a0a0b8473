"""One function writes a model folder: the encoder, the sentence-transformers files and (with a run's
record) the model card. The trainer's checkpoints and final save, the sentence-transformers module's
save and the export script all go through it."""
from __future__ import annotations

import logging
import os
from typing import Any

from clusterns.export.model_card import write_model_card
from clusterns.export.sentence_transformers import write_sentence_transformers_files
from clusterns.modeling.encoder import SentenceEncoder

logger = logging.getLogger(__name__)


def write_model_folder(encoder: SentenceEncoder, output_dir: str | os.PathLike, *, weights: bool = True,
                       prompt_convention: str | None = None, run_record: dict[str, Any] | None = None,
                       metrics: dict[str, Any] | None = None) -> list[str]:
    """Write `output_dir` so that AutoModel, SentenceEncoder and SentenceTransformer all load it.

    weights=False leaves a saved encoder's files as they are and (re)writes only the sentence-transformers
    files. run_record (the run's flags, as train.py records them) also writes README.md, the model card.
    Returns the sentence-transformers files written (relative to output_dir)."""
    if weights:
        encoder.save_pretrained(output_dir)
    written = write_sentence_transformers_files(output_dir, encoder, prompt_convention)
    if run_record is not None:
        write_model_card(output_dir, run_record, metrics)
    return written
