"""The pretrained networks every synthesizer family builds on: the timm body, its ImageNet weights, the text
encoder."""
