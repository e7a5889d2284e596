"""Registries through which a higher layer finds what a lower one offers, without the lower one importing it.

``CLUSTER_SECTIONS``: functions that add a block to each prompt cluster of ``sparke report``'s page:
``section(infos, members, by_run_prompt) -> html`` ('' for nothing), with ``infos`` the page's runs (dicts with
``label``, ``run``, ``model``, ...), ``members`` the cluster's prompts and ``by_run_prompt`` each run's records
by prompt. ``sparke.embedded`` registers the shapes world's block when imported; the report imports the packages
that may register (``sparke.report.sections``) and shows whatever is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CLUSTER_SECTIONS", "register_cluster_section"]

CLUSTER_SECTIONS: dict[str, Callable[..., str]] = {}


def register_cluster_section(name: str, section: Callable[..., str]) -> Callable[..., str]:
    """Add (or replace) the report's cluster section ``name``; returns ``section``."""
    CLUSTER_SECTIONS[name] = section
    return section


def registered(name: str) -> Any:
    """The section registered as ``name``, or None."""
    return CLUSTER_SECTIONS.get(name)
