"""Prompt alignment: CLIPScore (Hessel et al. 2021) with a transformers CLIP model given by folder or hub id.

CLIPScore(image, prompt) = 100 * max(cos(E_image, E_text), 0), with E the projected CLIP embeddings, as
torchmetrics defines it; a set's score is the mean over its images. Written here rather than taken from
torchmetrics' ``CLIPScore`` because that one loads only a fixed list of hub ids (no local folder) and, with
transformers 5, fails on ``get_image_features`` returning an output object instead of a tensor. Images are
resized (shorter side, bicubic, antialiased), centre-cropped and normalised as ``sparke evaluate``'s image
features are, with the model's preprocessor settings; prompts are truncated to the model's 77 tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import RunError
from .pixels import CLIP_MEAN, CLIP_STD, preprocessor_settings, resize_center_crop

__all__ = ["ClipScorer", "load_clip_scorer"]


@dataclass
class ClipScorer:
    """``scorer(images, prompts)``: images (N, 3, H, W) in [-1, 1], N prompts -> CLIPScores (N,) float64."""

    name: str
    model: Any
    tokenizer: Any
    size: int
    mean: torch.Tensor
    std: torch.Tensor
    device: str = "cpu"
    batch_size: int = 64

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size].to(self.device).float()
            pixels = (resize_center_crop((chunk + 1) / 2, self.size) - self.mean) / self.std
            vision = self.model.vision_model(pixel_values=pixels.to(self.model.dtype))
            image = self.model.visual_projection(vision.pooler_output)
            tokens = self.tokenizer(
                list(prompts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=min(int(self.tokenizer.model_max_length), 77),
                return_tensors="pt",
            ).to(self.device)
            text = self.model.text_projection(
                self.model.text_model(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
            )
            cosine = torch.nn.functional.cosine_similarity(image.double(), text.double(), dim=1)
            scores.append((100 * cosine.clamp_min(0)).cpu())
        return torch.cat(scores)


def load_clip_scorer(spec: str, device: str = "cpu", batch_size: int = 64) -> ClipScorer:
    """A CLIPScore scorer from a CLIP model folder or hub id (model and tokenizer); ``RunError`` if unusable."""
    from .generation import quiet_loading
    from .model import missing_folder

    missing_folder("--clip", spec)
    quiet_loading()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise RunError(f"--clip {spec}: cannot load a CLIP model and tokenizer ({first})") from None
    model.to(device).eval().requires_grad_(False)
    size = int(model.config.vision_config.image_size)
    size, mean, std = preprocessor_settings(spec, size, CLIP_MEAN, CLIP_STD)
    return ClipScorer(
        str(spec),
        model,
        tokenizer,
        size,
        torch.tensor(mean, device=device).view(1, 3, 1, 1),
        torch.tensor(std, device=device).view(1, 3, 1, 1),
        device,
        batch_size,
    )
