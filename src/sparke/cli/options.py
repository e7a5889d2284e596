"""The command-line options of ``sparke generate``, declared once as ``Annotated`` aliases.

A command's signature then reads as a list of names (``steps: Steps = None``), and the aliases carry the
help, the panel and the metavar. Per-method defaults in the help come from the method registry, so a method
added to ``sparke.methods.METHODS`` shows up in ``--method`` and in every setting's default.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from sparke.guidance.options import help_of
from sparke.methods import METHODS

PROMPTS = "Prompts"
MODEL = "Model and sampling"
GUIDANCE = "Guidance (see `sparke methods`)"
OUTPUT = "Output"

# a str Enum of the registry's names, so --help lists the choices (methods added to METHODS appear too)
MethodName = enum.Enum("MethodName", {name: name for name in METHODS}, type=str)


def method_defaults(setting: str) -> str:
    """The help's default of a method setting, per method: "[default: 10 (sparke, rke, vendi); 1 (pg)]"."""
    by_value: dict[str, list[str]] = {}
    for name, spec in METHODS.items():
        if setting in spec.defaults:
            value = spec.defaults[setting]
            text = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)
            by_value.setdefault(text, []).append(name)
    if not by_value:
        return ""
    if len(by_value) == 1:
        ((value, names),) = by_value.items()
        return f"  \\[default: {value}; methods {', '.join(names)}]"
    parts = "; ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())
    return f"  \\[default: {parts}]"


def _guide(
    setting: str, flag: str | None = None, help_text: str | None = None, **kwargs: object
) -> typer.models.OptionInfo:
    """An option of a SPARKE setting: its help from the options table (``sparke.guidance.options``), ending
    with each method's default."""
    names = (flag,) if flag else ()
    text = (help_text or help_of(setting)[setting]).rstrip(".") + "."
    text = text[0].upper() + text[1:]
    return typer.Option(*names, help=text + method_defaults(setting), rich_help_panel=GUIDANCE, **kwargs)


OutDir = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Run folder: images/, manifest.jsonl, bank.safetensors (made if missing).  \\[required]",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
PromptsFile = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help="Prompt file: one prompt per line ('cluster<TAB>prompt' names its cluster), or .jsonl lines "
        '{"prompt": ..., "cluster": ...}.',
        rich_help_panel=PROMPTS,
        show_default=False,
    ),
]
Prompt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt", "-p", help="A prompt (repeat for more); added after --prompts.", rich_help_panel=PROMPTS
    ),
]
ImagesPerPrompt = Annotated[
    int, typer.Option("--images-per-prompt", "-n", help="Images per prompt.", rich_help_panel=PROMPTS)
]
Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'embedded' (the shipped 32x32 shapes model), a diffusers pipeline folder, or a hub id "
        "(from the local cache when HF_HUB_OFFLINE=1).",
        rich_help_panel=MODEL,
    ),
]
Steps = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Denoising steps (the embedded model: 2 or more).  \\[default: the pipeline's own]",
        rich_help_panel=MODEL,
    ),
]
Cfg = Annotated[
    float | None,
    typer.Option(
        "--cfg",
        help="Classifier-free guidance scale, >= 0 (1 or less: none).  \\[default: the pipeline's own]",
        rich_help_panel=MODEL,
    ),
]
NegativePrompt = Annotated[
    str | None,
    typer.Option("--negative-prompt", help="Negative prompt for every image.", rich_help_panel=MODEL),
]
Height = Annotated[
    int | None, typer.Option(help="Image height (pipelines that take one).", rich_help_panel=MODEL)
]
Width = Annotated[
    int | None, typer.Option(help="Image width (pipelines that take one).", rich_help_panel=MODEL)
]
Seed = Annotated[
    int, typer.Option(help="Run seed; image i uses a seed derived from (seed, i).", rich_help_panel=MODEL)
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", "-b", help="Images per pipeline call.", rich_help_panel=MODEL)
]
Device = Annotated[
    str, typer.Option(help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...", rich_help_panel=MODEL)
]
Dtype = Annotated[
    str,
    typer.Option(
        help="auto (float16 on CUDA for hub models, else float32), float32, float16, bfloat16.",
        rich_help_panel=MODEL,
    ),
]
Method = Annotated[
    MethodName,
    typer.Option(
        "--method",
        help="Generation method: " + ", ".join(METHODS) + " (`sparke methods` describes each).",
        rich_help_panel=GUIDANCE,
    ),
]
Scale = Annotated[
    float | None,
    typer.Option(
        help="Guidance strength (0 = unguided).  \\[default: the method's own]", rich_help_panel=GUIDANCE
    ),
]
Every = Annotated[str | None, _guide("every", metavar="N|span|auto")]
SigmaImage = Annotated[float | None, _guide("sigma_image")]
SigmaPrompt = Annotated[float | None, _guide("sigma_prompt")]
Space = Annotated[str | None, _guide("space")]
Centre = Annotated[bool | None, _guide("centre", "--centre/--no-centre", show_default=False)]
Objective = Annotated[str | None, _guide("objective")]
Kernel = Annotated[str | None, _guide("kernel")]
Window = Annotated[str | None, _guide("window", help_text="START,END: " + help_of("window")["window"])]
Step = Annotated[str | None, _guide("step")]
PromptEncoder = Annotated[str | None, _guide("prompt_encoder", "--prompt-encoder")]
Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any other setting of the method (VALUE read as JSON, else as text); repeatable.",
        rich_help_panel=GUIDANCE,
    ),
]
Shield = Annotated[
    Path | None,
    typer.Option(
        help="spell: a saved bank of x0 rows in the model's own space (e.g. a spell run's bank.safetensors) "
        "whose images new ones must stay away from.",
        rich_help_panel=GUIDANCE,
        show_default=False,
    ),
]
Bank = Annotated[
    Path | None,
    typer.Option(
        help="Start from this bank (e.g. another run's bank.safetensors): new images are also pushed away "
        "from its rows. Must come from the same model and feature space.",
        rich_help_panel=GUIDANCE,
        show_default=False,
    ),
]
