"""The node classes: SPARKE Diversity (MODEL -> MODEL), SPARKE Bank, Diversity score.

ComfyUI's own modules (``folder_paths``, ``comfy.*``) are imported inside the functions that run in ComfyUI,
so that this module imports without it.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from .banks import DIRECTORIES, NamedBank, bank_file, named_bank, new_bank
from .features import conditioning_entries, image_rows, prompt_rows
from .patch import SparkePatch

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "default_strength"]

CATEGORY = "sparke"
BANK_TYPE = "SPARKE_BANK"


def default_strength() -> float:
    """The library's default step size: ``sparke.SPARKE``'s ``scale`` default, read from its signature."""
    from sparke.guidance import SPARKE

    return float(inspect.signature(SPARKE).parameters["scale"].default)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"SPARKE Diversity: {name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


class SparkeDiversity:
    """A clone of the model that pushes each new image away from the bank's images of similar prompts."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    DESCRIPTION = (
        "SPARKE prompt-aware diversity guidance (arXiv 2506.10173): every image is pushed away from earlier "
        "images of similar prompts held in the bank, and added to it after sampling."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "strength": ("FLOAT", {"default": default_strength(), "min": 0.0, "max": 1.0, "step": 0.005,
                                       "tooltip": "step size (sparke.SPARKE's scale); 0 = the model as it is"}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                            "tooltip": "first guided point of the schedule (0 = first step)"}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                          "tooltip": "last guided point of the schedule (1 = last step)"}),
            },
            "optional": {"bank": (BANK_TYPE, {"tooltip": "a SPARKE Bank; without one, this node keeps its own"})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }  # fmt: skip

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        # the patched model's output depends on the bank, which every run grows: never reuse a cached run
        # (a new NaN object each time: ComfyUI's cache compares keys by identity first, then equality)
        return float("nan")

    def patch(
        self,
        model: Any,
        strength: float,
        start_percent: float,
        end_percent: float,
        bank: NamedBank | None = None,
        unique_id: str | None = None,
    ) -> tuple[Any]:
        from sparke.guidance import SPARKE

        start, end = _fraction(start_percent, "start_percent"), _fraction(end_percent, "end_percent")
        if start > end:
            raise ValueError(f"SPARKE Diversity: start_percent {start} is after end_percent {end}")
        if (
            isinstance(strength, bool)
            or not isinstance(strength, (int, float))
            or not 0 <= strength < math.inf
        ):
            raise ValueError(f"SPARKE Diversity: strength must be a number >= 0, got {strength!r}")
        if bank is not None and not isinstance(bank, NamedBank):
            raise ValueError(
                f"SPARKE Diversity: bank must come from a SPARKE Bank node, got {type(bank).__name__}"
            )
        if bank is None:  # the node's own bank, kept across runs by the node's id (none outside a workflow)
            bank = named_bank(f"node {unique_id}") if unique_id is not None else NamedBank("", new_bank())
        named = bank
        guide = SPARKE(scale=float(strength), bank=named.bank)
        return (SparkePatch(guide, named, start, end).apply(model),)


class SparkeBank:
    """A named bank that lives across queue runs; optionally read from and written to a file."""

    DESCRIPTION = (
        "The images SPARKE remembers, under a name that lives across queue runs. file: a .safetensors bank "
        "file inside ComfyUI's user or output directory (sparke's own format)."
    )
    CATEGORY, FUNCTION, RETURN_TYPES = CATEGORY, "bank", (BANK_TYPE,)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "name": ("STRING", {"default": "default", "tooltip": "banks of the same name are one bank"}),
                "action": (["keep", "load", "reset"], {"tooltip": "keep the bank; load it from file; empty it"}),
                "file": ("STRING", {"default": "", "tooltip": "e.g. sparke/banks/cats.safetensors (empty: memory only)"}),
                "directory": (list(DIRECTORIES), {"tooltip": "ComfyUI's directory the file name is inside"}),
                "save_after_run": ("BOOLEAN", {"default": True, "tooltip": "write the file after every run"}),
            }
        }  # fmt: skip

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return float("nan")  # the bank changes with every run, and a load or a reset must happen when asked

    def bank(
        self, name: str, action: str, file: str, directory: str, save_after_run: bool
    ) -> tuple[NamedBank]:
        path = bank_file(file, directory_path(directory)) if file.strip() else None
        return (named_bank(name, path=path, action=action, save_after_run=bool(save_after_run)),)


def directory_path(directory: str) -> Path:
    """ComfyUI's user or output directory (``folder_paths``)."""
    import folder_paths

    if directory == "user":
        return Path(folder_paths.get_user_directory())
    if directory == "output":
        return Path(folder_paths.get_output_directory())
    raise ValueError(f"SPARKE Bank: directory must be one of {', '.join(DIRECTORIES)}, got {directory!r}")


class SparkeDiversityScore:
    """Vendi, Cond-Vendi and in-batch similarity of an IMAGE batch, as text and as numbers."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("text", "vendi", "cond_vendi", "in_batch_similarity")
    FUNCTION = "score"
    OUTPUT_NODE = True
    DESCRIPTION = (
        "How diverse a batch is: Vendi (1 = all alike, up to the batch size), Cond-Vendi (given the prompts) "
        "and the mean cosine similarity between images. Features: a CLIP vision model if connected, else a "
        "32 x 32 colour grid with each channel's mean removed."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",)},
            "optional": {"conditioning": ("CONDITIONING",), "clip_vision": ("CLIP_VISION",)},
        }

    def score(
        self, images: torch.Tensor, conditioning: Any = None, clip_vision: Any = None
    ) -> dict[str, Any]:
        text, vendi, cond_vendi, similarity = diversity_scores(images, conditioning, clip_vision)
        return {"ui": {"text": [text]}, "result": (text, vendi, cond_vendi, similarity)}


def diversity_scores(
    images: torch.Tensor, conditioning: Any = None, clip_vision: Any = None
) -> tuple[str, float, float, float]:
    """(text, Vendi, Cond-Vendi, in-batch similarity) of an IMAGE batch (B, H, W, 3); without conditioning
    every image has the same prompt, and Cond-Vendi equals Vendi."""
    from sparke.core import cond_vendi, in_batch_similarity, vendi

    try:
        x = image_rows(images, clip_vision)
        n = x.shape[0]
        y = (
            prompt_rows(conditioning_entries(conditioning), n)
            if conditioning is not None
            else torch.ones(n, 1)
        )
    except ValueError as error:
        raise ValueError(f"Diversity score: {error}") from None
    scores = (vendi(x), cond_vendi(x, y), in_batch_similarity(x))
    space = "CLIP vision" if clip_vision is not None else "colour grid"
    prompts = "" if conditioning is not None else " (no prompts: one shared)"
    text = (
        f"{n} images ({space} features): Vendi {scores[0]:.3f}, Cond-Vendi {scores[1]:.3f}{prompts}, "
        f"in-batch similarity {scores[2]:.3f}"
    )
    return (text, *scores)


NODE_CLASS_MAPPINGS = {
    "SparkeDiversity": SparkeDiversity,
    "SparkeBank": SparkeBank,
    "SparkeDiversityScore": SparkeDiversityScore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SparkeDiversity": "SPARKE Diversity",
    "SparkeBank": "SPARKE Bank",
    "SparkeDiversityScore": "Diversity score",
}
