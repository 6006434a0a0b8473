"""One function writes a model folder: the encoder and the sentence-transformers files. The trainer's
checkpoints and final save, the sentence-transformers module's save and the export script all go through
it; train.py adds the model card (export/model_card.py) once the run's metrics are known."""
from __future__ import annotations

import logging
import os

from clusterns.export.sentence_transformers import write_sentence_transformers_files
from clusterns.modeling.encoder import SentenceEncoder

logger = logging.getLogger(__name__)


def write_model_folder(encoder: SentenceEncoder, output_dir: str | os.PathLike, *, weights: bool = True,
                       prompt_convention: str | None = None) -> list[str]:
    """Write `output_dir` so that AutoModel, SentenceEncoder and SentenceTransformer all load it.

    weights=False leaves a saved encoder's files as they are and (re)writes only the sentence-transformers
    Returns the sentence-transformers files written (relative to output_dir)."""
    if weights:
        encoder.save_pretrained(output_dir)
    return write_sentence_transformers_files(output_dir, encoder, prompt_convention)
