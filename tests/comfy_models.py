"""Tiny random-weight denoisers that ComfyUI's own detection takes for SD1.5, SDXL and SD3, with conditioning.

Each family's state dict is made by ComfyUI's own model class with the smallest shape that
``comfy.model_detection`` still maps to that family's entry in ``comfy.supported_models``, and is loaded back
through ``comfy.sd.load_diffusion_model_state_dict``: the engine's real detection and loading path.
- SD1.5 (entry ``SD15``): UNet, context 768, 2 levels of 320 channels, one res block each (36.7M parameters).
- SDXL (entry ``Segmind_Vega``, an SDXL distillation: ``model_base.SDXL``, the SDXL latent format, 2816-wide
  ADM vector of pooled text features and size embeddings): UNet, context 2048, transformer depths
  [0, 0, 1, 1, 2, 2], every level 320 channels. The full SDXL entry needs depth 10 blocks (billions of weights).
- SD3 (entry ``SD3``, a flow model): MMDiT of depth 2 (hidden size 128), 16 latent channels, context 4096,
  pooled 2048.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Family:
    """A tiny model family: how its state dict is made, its expected detection, its conditioning widths."""

    name: str  # our label
    detected: str  # the comfy.supported_models class name detection must pick
    channels: int  # latent channels
    context: tuple[int, int]  # (tokens, width) of the cross-attention conditioning
    pooled: int | None  # width of pooled_output (None: the family has none)


FAMILIES = {
    "sd15": Family("sd15", "SD15", 4, (77, 768), None),
    "sdxl": Family("sdxl", "Segmind_Vega", 4, (77, 2048), 1280),
    "sd3": Family("sd3", "SD3", 16, (77, 4096), 2048),
}


def _unet(**config: Any) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=320,
                     use_spatial_transformer=True, legacy=False, operations=comfy.ops.disable_weight_init,
                     **config)  # fmt: skip


def state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (std 0.02 for matrices, the modules' own init elsewhere) of ``family``'s tiny model."""
    torch.manual_seed(seed)
    if family == "sd15":
        net = _unet(num_res_blocks=[1, 1], channel_mult=[1, 1], transformer_depth=[1, 0],
                    transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=1, context_dim=768,
                    use_linear_in_transformer=False, num_heads=8)  # fmt: skip
    elif family == "sdxl":
        net = _unet(num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 2, 2],
                    transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=1,
                    context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
                    num_classes="sequential", num_head_channels=64, num_heads=-1)  # fmt: skip
    elif family == "sd3":
        import comfy.ops
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        net = OpenAISignatureMMDITWrapper(in_channels=16, out_channels=16, patch_size=2, depth=2,
                                          adm_in_channels=2048, pos_embed_max_size=16, num_patches=256,
                                          context_embedder_config={"target": "torch.nn.Linear",
                                                                   "params": {"in_features": 4096,
                                                                              "out_features": 128}},
                                          operations=comfy.ops.disable_weight_init)  # fmt: skip
    else:
        raise ValueError(f"unknown family {family!r}")
    sd = net.state_dict()
    # disable_weight_init leaves parameters uninitialised: fill them, small enough to keep outputs finite
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.02).to(v.dtype) for k, v in sd.items()}


def load(family: str, seed: int = 0) -> Any:
    """The family's tiny model as ComfyUI's MODEL (a ModelPatcher), through ComfyUI's detection and loader."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(state_dict(family, seed))
    detected = type(model.model.model_config).__name__
    if detected != FAMILIES[family].detected:
        raise AssertionError(f"{family}: ComfyUI detected {detected}, expected {FAMILIES[family].detected}")
    return model


def conditioning(family: str, rows: int = 1, seed: int = 0) -> list:
    """ComfyUI CONDITIONING ``[[tokens (rows, T, D), {"pooled_output": (rows, P)}]]`` of random features."""
    fam = FAMILIES[family]
    gen = torch.Generator().manual_seed(seed)
    extra: dict[str, Any] = {}
    if fam.pooled is not None:
        extra["pooled_output"] = torch.randn(rows, fam.pooled, generator=gen)
    return [[torch.randn(rows, *fam.context, generator=gen), extra]]


def empty_latent(family: str, batch: int, size: int = 8) -> dict[str, torch.Tensor]:
    """ComfyUI LATENT of ``batch`` zero latents of ``size`` x ``size`` pixels."""
    return {"samples": torch.zeros(batch, FAMILIES[family].channels, size, size)}
