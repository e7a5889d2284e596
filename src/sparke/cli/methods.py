"""``sparke methods``: the generation methods of ``--method``, with their papers and default settings."""

from __future__ import annotations

import json

from .common import out, say

# how a default scale carries over to another model (the defaults differ by method, not by model)
SCALE_RULE = (
    "Scales: the defaults of sparke, rke, vendi and pg are the largest scales that keep the embedded model's "
    "images on-prompt (`sparke bench`, docs/benchmark.md); cads keeps its paper's 0.25. Each is in relative "
    "units (sparke, rke, vendi: a fraction of the latent's norm per guided step; pg: bandwidth units; cads: "
    "the noise std of the prompt embedding), so the same default applies to every model; on another model, "
    "sweep --scale (1/3x, 1x, 3x the default) and keep the largest that keeps the images on-prompt."
)


def methods_command() -> None:
    """List the generation methods: what each does, its paper, its default scale and settings."""
    from rich.table import Table

    from sparke.methods import METHODS

    table = Table(show_lines=True)
    table.add_column("method", style="bold")
    table.add_column("what it does")
    table.add_column("scale", justify="right")
    table.add_column("settings (--set KEY=VALUE or the named options)")
    for name, spec in METHODS.items():
        settings = "\n".join(
            f"{key} = {json.dumps(value)}" + (f"  [dim]{spec.help[key]}[/]" if key in spec.help else "")
            for key, value in spec.defaults.items()
        )
        scale = f"{spec.default_scale:g}" if spec.has_scale else "-"
        table.add_row(name, f"{spec.doc}\n[dim]{spec.paper}[/]", scale, settings or "-")
    out.print(table)
    say(SCALE_RULE, console=out)
