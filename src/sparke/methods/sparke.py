"""SPARKE and ``none`` as methods of ``sparke generate``, ``sparke bench`` and ``sparke methods``: their specs and
the command-line help of every SPARKE setting (shared by the rke and vendi methods built on the same guide).

The guide itself is ``sparke.guidance.plugin.SPARKE``; every default and help line is read from
``sparke.guidance.options``.
"""

from __future__ import annotations

import json

from sparke.guidance import SPARKE, MethodSpec
from sparke.guidance.options import DEFAULTS, help_of

__all__ = ["NONE_SPEC", "SPARKE_HELP", "SPARKE_SETTINGS", "SPARKE_SPEC", "flat_defaults"]

# the flat settings of the command line and run folders: all but the scale and the novelty weight (which needs a
# reference bank, a Python object)
SPARKE_SETTINGS = tuple(name for name in DEFAULTS if name not in ("scale", "novelty"))
SPARKE_HELP: dict[str, str] = help_of(*SPARKE_SETTINGS)


def flat_defaults(*settings: str) -> dict[str, object]:
    """The JSON-shaped defaults of ``settings`` (tuples become lists), as run folders record them."""
    return json.loads(json.dumps({name: DEFAULTS[name] for name in settings}))


SPARKE_SPEC = MethodSpec(
    name="sparke",
    doc="prompt-aware diversity guidance: raise the Cond-RKE of the bank plus the new images",
    paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173",
    default_scale=DEFAULTS["scale"],
    defaults=flat_defaults(*SPARKE_SETTINGS),
    build=SPARKE.from_settings,
    help=SPARKE_HELP,
)

# scale 0 is exactly the unguided call (no hook is attached); the guide still records every image's final
# latents in its bank, so an unguided run leaves a bank that a later guided run can start from.
NONE_SETTINGS = ("space", "centre", "prompt_encoder")
NONE_SPEC = MethodSpec(
    name="none",
    doc="the pipeline as is (classifier-free guidance only); its bank records the images' latents",
    paper="Ho & Salimans, Classifier-Free Diffusion Guidance, arXiv 2207.12598",
    default_scale=0.0,
    defaults=flat_defaults(*NONE_SETTINGS),
    build=lambda scale, settings: SPARKE.from_settings(0.0, settings),
    has_scale=False,
    help=help_of(*NONE_SETTINGS),
)
