"""SGPS: the Semantic-Guided Parameter Synthesizer of timm classifiers."""
