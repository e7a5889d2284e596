"""The guide's bank handling: which bank a guide gets, where it lives, what it accepts, and reference banks.

One contract for every bank a guide reads (``sparke.core.BankLike``): ``len``, ``x``, ``y``, ``add(x, y)`` and
``direction(x, y, spec)``. sparke's banks (``Bank``, ``AutoBank``, ``IndexedBank``) keep it; a user's bank is
checked against it once, when the guide is made.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from sparke.core import Bank
from sparke.core.auto import KINDS, make_bank
from sparke.core.compat import bank_mismatch
from sparke.core.spec import MEDIAN, KernelSpec

from .spaces import centred, encode_images, encode_to_latents, unit_rows

__all__ = [
    "bank_placement",
    "check_bank",
    "check_dims",
    "check_metadata",
    "execution_device",
    "own_bank",
    "reference_bank",
]

# what a guide calls on a bank (``sparke.core.protocol.BankLike`` in full)
CONTRACT = ("__len__", "x", "y", "add", "direction")


def execution_device(pipe: Any) -> torch.device:
    """The device the pipeline runs its denoiser on (``_execution_device`` under CPU offload)."""
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
    return torch.device(device)


def bank_placement(pipe: Any) -> tuple[torch.device, torch.dtype]:
    """Where a bank of the pipeline's images lives: its execution device, in half precision on CUDA."""
    device = execution_device(pipe)
    return device, (torch.float16 if device.type == "cuda" else torch.float32)


def own_bank(kind: str, spec: KernelSpec, **index_options: Any) -> Any:
    """The guide's own new bank of ``kind``. "auto" is an exact bank for a score no index answers
    (``spec.indexable``: a per-step median bandwidth, the cosine kernel, the Vendi scores), which an
    ``AutoBank`` would otherwise rebuild or move back past its crossover."""
    if spec.sigma_image == MEDIAN and kind == "indexed":
        raise ValueError(
            'bank: "indexed" searches with one fixed bandwidth, but sigma_image="median" changes it every '
            'step; use bank="auto" or "exact" (both keep an exact bank), or a number for sigma_image'
        )
    if kind == "auto" and not spec.indexable:
        kind = "exact"
    return make_bank(kind, **({} if kind == "exact" else index_options))


def check_bank(bank: Any) -> Any:
    """A user's bank, refused when it cannot be one (a file path, say, or an object lacking the contract)."""
    if isinstance(bank, (str, os.PathLike)):
        raise ValueError(
            f"bank: got {os.fspath(bank)!r}; pass {', '.join(map(repr, KINDS))} or a bank object. To start from "
            "a saved bank, load it: bank=sparke.AutoBank.load(path) (it reads exact and indexed bank files)"
        )
    missing = [name for name in CONTRACT if not hasattr(bank, name)]
    if missing:
        raise ValueError(
            f"bank: a {type(bank).__name__} lacks {', '.join(missing)}; pass a sparke.Bank, a sparke.AutoBank "
            "or an object with len(), x, y, add(x, y) and direction(x, y, spec) (sparke.core.BankLike)"
        )
    return bank


def check_dims(banks: dict[str, Any], dim_x: int, dim_y: int | None, space: str, pipe_name: str) -> None:
    """Refuse a bank (label -> bank or None) whose feature widths differ from this call's (dim_x, dim_y)."""
    for label, bank in banks.items():
        if bank is None:
            continue
        bank_dim = getattr(bank, "dim_x", None)  # None: an empty Bank has no dims yet
        if bank_dim is not None and bank_dim != dim_x:
            raise ValueError(
                f"{label} holds image features of dim {bank_dim}, but space={space!r} on {pipe_name} gives "
                f"dim {dim_x}: use a bank made with the same pipeline, resolution and space"
            )
        bank_dim_y = getattr(bank, "dim_y", None)
        if dim_y is not None and bank_dim_y is not None and bank_dim_y != dim_y:
            raise ValueError(
                f"{label} holds prompt features of dim {bank_dim_y}, but the prompt encoder gives dim "
                f"{dim_y}: use the same prompt_encoder as the bank was made with"
            )


def check_metadata(banks: dict[str, Any], space: str, prompt_encoder: str) -> None:
    """Refuse a bank (label -> bank or None) that says it holds another feature space (``space_label``'s text)
    or another prompt encoder's features: rows of the same width from elsewhere would be compared as if alike.
    The pipeline class is not compared (one model serves several pipelines)."""
    for label, bank in banks.items():
        problem = bank_mismatch(getattr(bank, "metadata", None), space=space, prompt_encoder=prompt_encoder)
        if bank is not None and problem:
            raise ValueError(f"{label}: {problem}")


def reference_bank(pipe: Any, images: Any, space: Any, centre: bool | float, y: torch.Tensor | None) -> Bank:
    """A Bank of the features of ``images`` (PIL images, arrays, or (N, 3, H, W) in [0, 1]) in ``space``, with
    prompt features y (N, e) or None: a novelty reference, or a shield."""
    pixels = _to_pixels(pipe, images)
    if space in ("latent", "x0"):
        latents = encode_to_latents(pipe, pixels)
        x = unit_rows(centred(latents, float(centre)) if centre else latents)
    else:
        x = unit_rows(encode_images(space, pixels))
    if y is not None and len(y) != x.shape[0]:
        raise ValueError(f"prompts: {len(y)} prompts for {x.shape[0]} images")
    bank = Bank(metadata=dict(kind="reference", pipeline=type(pipe).__name__))
    bank.add(x.cpu(), None if y is None else y.cpu())
    return bank


def _to_pixels(pipe: Any, images: Any) -> torch.Tensor:
    """Images -> (N, 3, H, W) float in [-1, 1] on the pipeline's device."""
    processor = getattr(pipe, "image_processor", None)
    if processor is not None and hasattr(processor, "preprocess"):
        pixels = processor.preprocess(images)
    else:
        if isinstance(images, torch.Tensor):
            pixels = images.float()
        else:
            import numpy as np

            arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
            pixels = torch.from_numpy(arr).permute(0, 3, 1, 2)
        pixels = pixels * 2 - 1
    return pixels.to(execution_device(pipe))
