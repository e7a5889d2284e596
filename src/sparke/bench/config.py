"""Benchmark settings: the prompt set, sampler and scale sweeps of ``sparke bench --quick`` / ``--full``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sparke.guidance.options import DEFAULTS, PAPER
from sparke.methods import METHODS

__all__ = ["BenchConfig", "FULL", "QUICK", "guide_options"]


@dataclass
class BenchConfig:
    """One benchmark run. ``sweeps``: method -> scales (``none`` always runs once, at scale 0)."""

    clusters: int = 12  # prompt clusters (one scene description each)
    prompts: int = 8  # paraphrases per cluster
    seeds: int = 4  # images per prompt (rounds over the whole prompt set)
    steps: int = 10  # DPM-Solver++ steps
    cfg: float = 4.0  # classifier-free guidance scale
    seed: int = 0  # prompt-set and noise seed (the quick/full scales were tuned on seed 0)
    n_boot: int = 500  # bootstrap resamples of the prompt clusters for the 95% intervals (0: none)
    sweeps: dict[str, list[float]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {method, scales, options}
    mixture: bool = True  # also run the 2-D Gaussian-mixture experiment
    device: str = "cpu"
    weights: str | None = None  # folder with the embedded UNet (default: the shipped one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def every(self) -> int:
        """Guidance interval of the baselines rke and vendi: the paper guides every 10th of 50 steps (5 guided
        steps); SPARKE runs its own default schedule (``every="span"``), as ``SPARKE()`` does."""
        return max(1, self.steps // 5)


def guide_options(method: str, config: BenchConfig) -> dict[str, Any]:
    """Per-method options the benchmark sets on top of each method's defaults (only the baselines' interval)."""
    if method in ("rke", "vendi"):
        return {"every": config.every}
    return {}


# SPARKE at its defaults (``sparke.guidance.options``). The baselines run at their own default scales (each
# method's spec); cads at its paper default. Six settings of 384 images at 10 steps fit 20 minutes on 2 idle CPU
# cores; `--variant 'sparke latent:sparke:0.01:space="latent";centre=false;motion=0'` adds the paper's step.
DEFAULT_SCALE = DEFAULTS["scale"]
QUICK = BenchConfig(
    sweeps={
        "sparke": [DEFAULT_SCALE],
        "rke": [METHODS["rke"].default_scale],
        "vendi": [METHODS["vendi"].default_scale],
        "cads": [METHODS["cads"].default_scale],
        "pg": [METHODS["pg"].default_scale],
    },
)

FULL = BenchConfig(
    clusters=24,
    prompts=12,
    seeds=6,
    steps=20,
    sweeps={
        "sparke": sorted({0.01, 0.03, 0.05, DEFAULT_SCALE, 0.1}),
        "rke": [0.001, 0.003, 0.01, 0.03],
        "vendi": [0.001, 0.003, 0.01, 0.03],
        "cads": [0.05, 0.1, 0.25, 0.5],
        "pg": [0.0003, 0.001, 0.003, 0.01],
    },
    variants={
        # the paper's step (SPARKE.paper()): the noisy latents as they are, the plain relative gradient step
        "sparke latent": {"method": "sparke", "scales": [0.003, 0.01, 0.03], "options": dict(PAPER)},
        "sparke early": {"method": "sparke", "scales": [0.03, 0.06], "options": {"window": (0.0, 0.5)}},
    },
)
