"""Image feature extractors of ``sparke evaluate`` (``--features``), without torchvision.

- ``embedded``: the embedded model's shapes encoder (128-d; images resized to its 32x32).
- a transformers image model given by hub id or folder: CLIP (``image_embeds`` of
  ``CLIPVisionModelWithProjection``, or the pooled output of a bare ``CLIPVisionModel``), DINOv2 (the pooled CLS
  token) or another ``AutoModel`` (pooled output, else the mean of the last hidden states). Images are resized
  (bicubic, antialiased) to the model's input size and normalised with its preprocessor's mean and std (CLIP's,
  or ImageNet's when it has no preprocessor file).

Every feature row is L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RunError
from .imagefolder import to_unit_range
from .pixels import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocessor_settings,
    resize_center_crop,
)

__all__ = ["MAX_CHUNK_PIXELS", "FeatureExtractor", "load_features"]

MAX_CHUNK_PIXELS = 1 << 23  # pixels of one encoder call: bounds the float copy of a batch of large images


@dataclass
class FeatureExtractor:
    """``extractor(images)`` with images (N, 3, H, W) float in [-1, 1] -> unit-norm features (N, dim)."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    device: str = "cpu"
    batch_size: int = 64

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float in [-1, 1], or uint8 (converted a chunk at a time, so that a batch of
        large images is held as float only ``chunk_rows`` at a time)."""
        out = []
        step = self.chunk_rows(images.shape[-2:])
        for start in range(0, images.shape[0], step):
            chunk = to_unit_range(images[start : start + step]).to(self.device)
            out.append(torch.nn.functional.normalize(self.encode(chunk).float().flatten(1), dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def chunk_rows(self, size: Sequence[int]) -> int:
        """Images per encoder call at (height, width): ``batch_size``, fewer when the float copy of that many
        would pass ``MAX_CHUNK_PIXELS`` (8 images of 1024 x 1024: 100 MB of float32)."""
        pixels = max(1, int(size[0]) * int(size[1]))
        return max(1, min(self.batch_size, MAX_CHUNK_PIXELS // pixels))


def load_features(spec: str = "embedded", device: str = "cpu", batch_size: int = 64) -> FeatureExtractor:
    """The image feature extractor named by ``spec`` (see the module docstring); ``RunError`` if unavailable."""
    from .model import quiet_loading

    quiet_loading()
    if spec == "embedded":
        from sparke.embedded.encoder import load_encoder

        try:
            encoder = load_encoder(device)
        except FileNotFoundError as error:
            raise RunError(
                f"--features embedded: the shapes encoder's weights are missing ({error})"
            ) from None

        def encode(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-2:] != (32, 32):  # the encoder was trained on 32x32 renders
                x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
            return encoder(x)

        return FeatureExtractor("embedded", encode, device, batch_size)
    return _hf_features(spec, device, batch_size)


def _model_config(spec: str) -> Any:
    """The transformers config of the image model ``spec`` (a folder or a cached hub id); ``RunError`` naming
    what is there instead."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        where = (
            "a folder without an image model (no config.json)"
            if Path(spec).is_dir()
            else "not a local model folder nor in the Hugging Face cache"
        )
        raise RunError(f"--features {spec}: {where} ({first})") from None


def _hf_features(spec: str, device: str, batch_size: int) -> FeatureExtractor:
    from .model import missing_folder

    missing_folder("--features", spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if (Path(spec) / "model_index.json").is_file():
        raise RunError(
            f"--features {spec}: a diffusers pipeline folder, not an image model; give 'embedded', a CLIP or "
            "DINOv2 model folder, or a hub id such as openai/clip-vit-base-patch32"
        )
    config = _model_config(spec)
    from sparke.encoders.quiet import quiet_transformers

    kind = getattr(config, "model_type", "")
    arch = (getattr(config, "architectures", None) or [""])[0]
    try:
        if kind in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

            with_projection = arch in ("CLIPVisionModelWithProjection", "CLIPModel")
            cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
            with quiet_transformers():
                model = cls.from_pretrained(spec)
            vision = config.vision_config if kind == "clip" else config
            mean, std = CLIP_MEAN, CLIP_STD
        else:
            from transformers import AutoModel

            with quiet_transformers():
                model = AutoModel.from_pretrained(spec)
            vision, with_projection = config, False
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    except (OSError, ValueError) as error:
        raise RunError(
            f"--features {spec}: cannot load the model ({str(error).splitlines()[0][:200]})"
        ) from None
    model.to(device).eval().requires_grad_(False)
    size = int(getattr(vision, "image_size", 224) or 224)
    size, mean, std = preprocessor_settings(spec, size, mean, std)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def encode(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2  # [-1, 1] -> [0, 1]
        x = resize_center_crop(x, size)
        out = model(pixel_values=((x - mean_t) / std_t).to(model.dtype))
        if with_projection:
            return out.image_embeds
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(1)

    return FeatureExtractor(str(spec), encode, device, batch_size)
