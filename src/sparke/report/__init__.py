"""The HTML report of ``sparke report``: one self-contained page comparing run folders."""

from .builder import build_report, line_plot

__all__ = ["build_report", "line_plot"]
