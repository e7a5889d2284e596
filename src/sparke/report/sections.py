"""The extra blocks of each prompt cluster on the page, registered by the packages that know about them
(``sparke.core.extensions.CLUSTER_SECTIONS``; the shapes world's free attributes come from ``sparke.embedded``)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from sparke.core.extensions import CLUSTER_SECTIONS

__all__ = ["PROVIDERS", "cluster_sections"]

# packages imported so that they register their sections (one that cannot be imported adds none)
PROVIDERS = ("sparke.embedded",)


def cluster_sections() -> list[Callable[..., str]]:
    """The registered cluster sections, in registration order."""
    for name in PROVIDERS:
        try:
            import_module(name)
        except ImportError:
            continue
    return list(CLUSTER_SECTIONS.values())
