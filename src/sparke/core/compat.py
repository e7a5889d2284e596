"""Whether a saved bank fits a guide: the metadata a bank records (``model``, ``pipeline``, ``space``,
``prompt_encoder``) against the guide's own. Rows of the same width can come from another feature space (the
latents and x0 of one model, or two encoders of the same width); their distances then mean nothing, so a
bank is refused on what it says it holds, not only on its width. One check for the command line
(``sparke.runs.session``) and the library (the guide's bank handling)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["bank_mismatch"]


def bank_mismatch(
    meta: Mapping[str, Any] | None,
    *,
    space: str | None = None,
    pipeline: str | None = None,
    prompt_encoder: str | None = None,
    model: str | None = None,
) -> str | None:
    """Why a bank with metadata ``meta`` does not fit a guide in feature ``space`` (``space_label``'s text, e.g.
    "x0", "latent-centred") on a ``pipeline`` (class name) with ``prompt_encoder``, for ``model`` (a run's model
    record, when known); None when it fits. A field the bank does not record, or the guide does not give, is not
    compared (banks of older versions, or made by hand, say little)."""
    meta = meta or {}
    theirs = meta.get("model")
    if model is not None and theirs is not None and theirs != model:
        return f"bank of model {theirs!r}, but this run uses {model!r}"
    theirs = meta.get("pipeline")
    if (
        pipeline is not None
        and theirs is not None
        and theirs != pipeline
        and (model is None or "model" not in meta)
    ):
        return f"bank of a {theirs}, but this run uses a {pipeline}"
    theirs = meta.get("space")
    if space is not None and theirs is not None and theirs != space:
        return f"bank in feature space {theirs!r}, but this run guides in {space!r}"
    theirs = meta.get("prompt_encoder")
    if prompt_encoder is not None and theirs is not None and theirs != prompt_encoder:
        return f"bank with prompt encoder {theirs!r}, but this run uses {prompt_encoder!r}"
    return None
