"""SentEval-compatible evaluation harness (our own code; SentEval's API, layout and numbers).

Usage, exactly as SimCSE's evaluation.py does it::

    import senteval
    se = senteval.engine.SE(params, batcher, prepare)
    results = se.eval(['STS12', 'STSBenchmark'])

See ``SentEval/README.md``-style notes in ``engine.py`` for the params this harness adds.
"""
from senteval import engine  # noqa: F401  (SimCSE calls ``senteval.engine.SE``)
from senteval.engine import SE  # noqa: F401
from senteval.utils import DataFormatError, MissingDataError  # noqa: F401

__all__ = ["SE", "engine", "MissingDataError", "DataFormatError"]
