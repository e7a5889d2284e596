"""HTML bits shared by the report's modules."""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

PALETTE = ("#2f6fde", "#e4572e", "#17a398", "#8e5ad6", "#f2a541", "#5b6473", "#d6478b")


def asset(name: str) -> str:
    """A file shipped beside the report's code (template, CSS, JavaScript)."""
    return resources.files("sparke.report").joinpath(name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped: safe in attributes too)."""
    return html.escape(str(value), quote=True)
