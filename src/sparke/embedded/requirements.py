"""What a shapes-world prompt asks for, read with the world's vocabulary (``world.SHAPE_WORDS``, ``COLOUR_WORDS``,
...): the requirements the checker's prompt-match rate compares its reading with."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparke.embedded import world as W

__all__ = ["is_embedded_model", "required_from_prompt", "unreadable_prompts", "unreadable_reason"]


def required_from_prompt(prompt: str) -> dict[str, Any] | None:
    """Attributes a shapes-world prompt requires (shape, colour, count; size, background, position if stated),
    read with the world's vocabulary; None when it names no known shape or colour."""
    text = " " + re.sub(r"\s+", " ", prompt.lower()) + " "

    def find(table: dict[str, Sequence[str]]) -> str | None:
        best: tuple[int, int, str] | None = None  # (-length, position) of the longest, earliest phrase
        for name, words in table.items():
            for word in words:
                m = re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)
                if m and (best is None or (-len(word), m.start()) < best[:2]):
                    best = (-len(word), m.start(), name)
        return None if best is None else best[2]

    shapes = {s: [w for pair in pairs for w in pair] for s, pairs in W.SHAPE_WORDS.items()}
    shape, colour = find(shapes), find(W.COLOUR_WORDS)
    if shape is None or colour is None:
        return None
    two = re.search(r"(?<!\w)(two|2|a pair of)(?!\w)", text) is not None
    required: dict[str, Any] = {"shape": shape, "colour": colour, "count": 2 if two else 1}
    size = find(W.SIZE_WORDS)
    if size is not None:
        required["size"] = size
    for name, words in W.BACKGROUND_WORDS.items():
        if any(re.search(rf"(?<!\w){re.escape(w)} (background|backdrop)(?!\w)", text) for w in words):
            required["background"] = name
            break
    m = re.search(
        r"(?<!\w)(?:in|at|on) the (top left|top right|bottom left|bottom right|top|bottom|left|right|centre|"
        r"center|middle)(?!\w)",
        text,
    )
    if m is not None:
        required["position"] = {"center": "centre", "middle": "centre"}.get(m.group(1), m.group(1))
    return required


def unreadable_reason(prompt: str) -> str:
    """Why ``required_from_prompt`` cannot read a prompt ("no shape word the shapes world knows", ...), or ''."""
    if required_from_prompt(prompt) is not None:
        return ""
    text = prompt.lower()
    shape = any(
        re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)
        for p in W.SHAPE_WORDS.values()
        for pair in p
        for w in pair
    )
    colour = any(
        re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for ws in W.COLOUR_WORDS.values() for w in ws
    )
    missing = [what for what, found in (("shape", shape), ("colour", colour)) if not found]
    return f"no {' or '.join(missing)} word the shapes world knows"


def unreadable_prompts(prompts: Sequence[str]) -> dict[str, str]:
    """The distinct prompts the checker cannot read, each with why (``unreadable_reason``)."""
    out = {}
    for prompt in dict.fromkeys(prompts):
        reason = unreadable_reason(prompt)
        if reason:
            out[prompt] = reason
    return out


def is_embedded_model(model: Any) -> bool:
    """Whether ``model`` (a run's model: "embedded", or a folder) is the embedded shapes model, shipped or
    saved as a ShapesPipeline folder."""
    if model == "embedded":
        return True
    index = Path(str(model)) / "model_index.json" if model else None
    if index is not None and index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name") == "ShapesPipeline"
        except (OSError, ValueError):
            return False
    return False
