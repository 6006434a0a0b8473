"""clusterns: SimCSE-family sentence-embedding training (SimCSE, ClusterNS, MixCSE, DiffCSE/KoDiffCSE)
with a vendored SentEval harness.

Layers import downwards only: io, precision <- modeling <- objectives <- export <- training <- cli.

    from clusterns import SentenceEncoder
    encoder = SentenceEncoder.from_pretrained("result/my-unsup-simcse")
    vectors = encoder.encode(["A man is playing a guitar."])
"""
from clusterns.export.folder import write_model_folder
from clusterns.modeling.encoder import EncoderConfig, SentenceEncoder
from clusterns.modeling.poolers import get_pooler, pooler_names, register_pooler
from clusterns.modeling.pooling import Pooler
from clusterns.objectives import (
    EncodedViews,
    Objective,
    ObjectiveOutput,
    get_objective_class,
    objective_names,
    register_objective,
)
from clusterns.training.run import Run, build_run
from clusterns.training.trainer import ContrastiveTrainer

__version__ = "0.1.0"

__all__ = [
    "ContrastiveTrainer", "EncodedViews", "EncoderConfig", "Objective", "ObjectiveOutput", "Pooler", "Run",
    "SentenceEncoder", "__version__", "build_run", "get_objective_class", "get_pooler", "objective_names",
    "pooler_names", "register_objective", "register_pooler", "write_model_folder",
]
