"""The embedded text-to-image model: a tiny shapes world, its diffusers pipeline, checker and encoder.

``load_pipeline()`` returns the shipped ``ShapesPipeline``; the modules import lazily so that
``import sparke.embedded`` needs neither diffusers nor scipy.
"""

from __future__ import annotations

from typing import Any

from sparke.core.extensions import register_cluster_section

__all__ = ["load_pipeline", "load_encoder", "ShapesPipeline", "check", "matches", "prompt_clusters"]

_LAZY = {
    "load_pipeline": "sparke.embedded.pipeline",
    "ShapesPipeline": "sparke.embedded.pipeline",
    "load_encoder": "sparke.embedded.encoder",
    "check": "sparke.embedded.checker",
    "matches": "sparke.embedded.checker",
    "prompt_clusters": "sparke.embedded.world",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparke.embedded' has no attribute {name!r}")


def _free_attributes_section(*args: Any) -> str:
    """The report's free-attributes block (``report_section``), imported when the report first asks for it."""
    from .report_section import free_attributes_section

    return free_attributes_section(*args)


register_cluster_section("shapes-world free attributes", _free_attributes_section)
