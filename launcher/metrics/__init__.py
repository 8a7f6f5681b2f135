"""Evaluation metrics computed on rank 0 over the whole gathered eval set, in pure Python.

Each report takes plain per-example lists (already gathered from every rank and put back in
dataset order) and returns a JSON-ready dict, so the same numbers can be written to the run
directory, logged, and compared with the reference tools (sklearn, seqeval, the official
SQuAD v2.0 script) that the tests check them against.
"""

from __future__ import annotations

from launcher.metrics.classification import classification_report
from launcher.metrics.multilabel import multilabel_report
from launcher.metrics.ner import ner_report
from launcher.metrics.squad_v2 import squad_v2_report

__all__ = ["classification_report", "multilabel_report", "ner_report", "squad_v2_report"]
