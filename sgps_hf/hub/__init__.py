"""All Hub and file I/O (in the manner of ``timm/models/_hub.py``): checkpoints, classifier folders, cards, atomic
saves."""
