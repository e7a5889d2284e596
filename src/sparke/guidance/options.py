"""Every SPARKE setting, declared once: its default, its one-line help and where it lives.

``SPARKE(...)``'s signature, ``Update``'s fields, the bank options, ``sparke methods`` and the command line's
``--set`` help, the benchmark's sweeps and goal check, the report and the options table of docs/guide.md all read
this table (``tests/test_one_source.py`` fails when any of them differ). A setting lives in one of three homes:

- ``guide``: a parameter of ``SPARKE(...)`` (what users set);
- ``update``: a field of ``Update``, the research options of how a guided step moves the latents;
- ``bank``: an option of the guide's own bank (``sparke.AutoBank``).

The command line and run folders keep every setting flat (``--set motion=0``), as they always have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULTS", "OPTIONS", "PAPER", "PAPER_SCALE", "Option", "help_of", "names", "options_table"]


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str  # one line, for --help, `sparke methods` and the docs table
    home: str  # "guide", "update" or "bank"


OPTIONS: tuple[Option, ...] = (
    Option("scale", 0.03, "step size eta; 0 gives exactly the unguided output", "guide"),
    Option(
        "objective",
        "cond-rke",
        "score the guidance raises: cond-rke (SPARKE), rke, cond-vendi, vendi",
        "guide",
    ),
    Option(
        "sigma_image",
        0.8,
        "bandwidth of the image-feature kernel (unit-norm features), or median (per step, from distances)",
        "guide",
    ),
    Option("sigma_prompt", 0.3, "bandwidth of the prompt-feature kernel (unit-norm features)", "guide"),
    Option(
        "space",
        "x0",
        "feature space: x0 (clean-sample estimate), latent (the paper's) or an image encoder (Python only)",
        "guide",
    ),
    Option(
        "every",
        "span",
        "guide at denoising steps 0, every, 2*every, ...; auto: 10 from 20 steps on, else ceil(steps/5); span: "
        "up to 5 steps spread over the noise levels, each moving its share of 5 steps of scale",
        "guide",
    ),
    Option("window", (0.0, 1.0), "(start, end) fractions of the trajectory where guidance acts", "guide"),
    Option(
        "prompt_encoder", "pipeline", "prompt features: pipeline (its own text encoder) or minilm", "guide"
    ),
    Option("novelty", 0.0, "weight of the push away from the reference images (needs reference=)", "guide"),
    Option(
        "centre",
        True,
        "compare latents minus each channel's spatial mean: move layout, not global colour (latent, x0); "
        "a fraction in [0, 1] removes that share of each mean",
        "update",
    ),
    Option(
        "motion",
        2.0,
        "keep only the part of the step that moves what the clean estimate shows (displacement field over "
        "this many latent pixels); global: one shift and zoom per image; 0: the plain gradient step",
        "update",
    ),
    Option(
        "warp",
        "auto",
        "with motion: move the clean estimate by the fitted field for real (resampled); auto: wherever motion "
        "is on and neither smooth nor orthogonal is set",
        "update",
    ),
    Option(
        "step", "relative", "relative (scale * |z| * g/|g|, the authors' rule) or raw (scale * g)", "update"
    ),
    Option("kernel", "gaussian", "kernel on the unit-norm features: gaussian or cosine", "update"),
    Option(
        "step_schedule",
        "constant",
        "constant, or noise: each step times the sample's noise share (large early, none late)",
        "update",
    ),
    Option("smooth", 0.0, "Gaussian blur (latent pixels) of the step's gradient; 0: none", "update"),
    Option(
        "gate",
        0.0,
        "guide a sample only when a bank image of a similar prompt is within this feature distance; 0: off",
        "update",
    ),
    Option(
        "orthogonal",
        False,
        "drop the step's component along its CFG direction (cond - uncond); no CFG: plain",
        "update",
    ),
    Option(
        "crowding",
        0.0,
        "per-sample step scale m / (m + crowding), m: kernel mass of similar bank rows; 0: off",
        "update",
    ),
    Option(
        "crossover",
        None,
        "bank rows past which the bank is indexed (null: the device's measured figure)",
        "bank",
    ),
    Option("neighbors", 256, "indexed bank: nearest rows read exactly per step", "bank"),
    Option(
        "samples",
        None,
        "indexed bank: rows sampled per step for the rest of the bank (null: 3 * neighbors)",
        "bank",
    ),
)

DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}

# The paper's step (arXiv 2506.10173): the noisy latents as they are, the plain relative gradient step.
# ``SPARKE.paper()``, ``Update.paper()``, the rke and vendi baselines and the bench's "sparke latent" read it.
PAPER: dict[str, Any] = {"space": "latent", "centre": False, "motion": 0.0}
PAPER_SCALE = 0.03  # the paper's eta


def names(home: str) -> tuple[str, ...]:
    """The settings that live in ``home`` ("guide", "update" or "bank"), in declaration order."""
    return tuple(option.name for option in OPTIONS if option.home == home)


def help_of(*settings: str) -> dict[str, str]:
    """setting -> its one-line help, for ``settings`` (all of them when none is named)."""
    wanted = settings or tuple(DEFAULTS)
    table = {option.name: option.help for option in OPTIONS}
    return {name: table[name] for name in wanted}


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_cell(v) for v in value) + ")"
    return "None" if value is None else repr(value)


def options_table() -> str:
    """The options as a markdown table (docs/guide.md holds it between the ``options-table`` markers)."""
    where = {"guide": "`SPARKE(...)`", "update": "`Update(...)`", "bank": "`AutoBank(...)`"}
    rows = ["| setting | default | where | what it does |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        rows.append(f"| `{option.name}` | `{_cell(option.default)}` | {where[option.home]} | {option.help} |")
    return "\n".join(rows) + "\n"
