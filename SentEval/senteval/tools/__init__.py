"""Classifiers and validation schemes of SentEval (CPU or GPU)."""
