"""The vendored SentEval harness (SentEval/senteval): importable from a checkout without installation.

An installed clusterns maps the `senteval` package (pyproject.toml); a checkout that is only on
sys.path finds it beside the package. Every module that needs the harness imports it from here."""
from __future__ import annotations

import os
import sys

try:
    import senteval
except ImportError:  # running from a checkout without installation
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "SentEval"))
    import senteval

from senteval import clustering, korsts, sts, sts_files
from senteval.engine import SE, resolve_downstream
from senteval.utils import DataFormatError, MissingDataError, progress_bar_disabled, to_numpy

__all__ = ["DataFormatError", "MissingDataError", "SE", "clustering", "korsts", "progress_bar_disabled", "resolve_downstream", "senteval",
           "sts", "sts_files", "to_numpy"]
