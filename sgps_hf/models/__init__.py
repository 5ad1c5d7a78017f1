"""Synthesizer families, one folder each in the transformers manner (configuration, modeling, processing)."""
