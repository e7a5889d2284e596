"""Why the motion step loses the prompt at 4 steps: per guided step, the size of the move SPARKE makes
against the noise level and against the clean estimate's sharpness, for ``SPARKE()`` (the warped motion step),
the plain step (``SPARKE(scale=0.03, update=Update(motion=0))``) and ``SPARKE.paper()``, at 4 and 10 steps on
the embedded shapes model (CPU, a few minutes on one thread).

    python benchmarks/few_step_move.py [--clusters 4] [--prompts 4] [--rounds 2] [--only 'SPARKE()@4'] [--out FILE.md]

Per guided step (medians over the samples; the latents z = alpha_t x0 + sigma_t eps are the pixels in [-1, 1]):

- sigma: the step's EDM noise level sigma_t / alpha_t (the sampler's own ``sigmas``);
- move / sigma_t: the RMS of the move the guide adds to z over the RMS of the noise still in z (sigma_t). The
  rest of the run removes noise of about that size; a move well above it is not noise the model can undo;
- move (x0 units): the move over alpha_t: how far it shifts the clean image (pixels in [-1, 1]);
- x0 error: the RMS difference between the clean estimate the step is fitted on (the raw x0, as the guide
  sees it) and the sample's final image, in pixels in [-1, 1] (a world render's RMS contrast about its mean:
  median 0.25);
- x0 sharpness: the clean estimate's mean finite-difference gradient over the final image's (1: as sharp as
  the result; far above 1: amplified noise, not edges);
- shift (px): move (x0 units) over the clean estimate's mean gradient: by how many pixels the move would shift
  the estimate's edges to first order (for the motion step, about its displacement field's size).

Every setting generates the same prompts from the same noise, one call per cluster and round (the bench's way);
fidelity (the checker's match rate), its difference to unguided at the same step count and the images lost and
gained against their unguided twins close the table. The windowed rows guide some of the steps only
(``window``): steps 0-1 or 2-3 of the 4-step run, or one of its first two, and the 10-step run's first two
guided steps (0 and 2): which guided steps cost the prompt, and whether more model calls after them repair it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sparke
from sparke.embedded import world as W
from sparke.embedded.checker import check, matches
from sparke.embedded.pipeline import load_pipeline
from sparke.guidance.attach import split_batch
from sparke.guidance.spaces import step_sigma, x0_estimate

SETTINGS = {
    "none": lambda: None,
    "SPARKE()": lambda: sparke.SPARKE(),
    "SPARKE(), first half only": lambda: sparke.SPARKE(window=(0.0, 0.5)),
    "SPARKE(), second half only": lambda: sparke.SPARKE(window=(0.5, 1.0)),
    "SPARKE(), step 0 only": lambda: sparke.SPARKE(window=(0.0, 0.0)),
    "SPARKE(), step 1 only": lambda: sparke.SPARKE(window=(1 / 3, 1 / 3)),  # of 4 steps: fraction 1/3
    "SPARKE(), first two guided steps only": lambda: sparke.SPARKE(window=(0.0, 0.25)),  # of 10: steps 0, 2
    "plain step 0.03": lambda: sparke.SPARKE(scale=0.03, update=sparke.Update(motion=0)),
    "SPARKE.paper()": lambda: sparke.SPARKE.paper(),
}
# (setting, steps). The windowed rows split the 4-step run's guided steps to see which of them lose the prompt,
# and guide the 10-step run at only its first two guided steps (sigma 157 and 25.5, as the 4-step run's first
# half at 157 and 17) with seven model calls after them instead of two.
ROWS = [
    *[(name, 4) for name in SETTINGS if "two guided" not in name],
    *[(name, 10) for name in ("none", "SPARKE()", "SPARKE(), first two guided steps only")],
    *[(name, 10) for name in ("plain step 0.03", "SPARKE.paper()")],
]
CFG = 4.0  # the bench's


def _sharpness(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute finite-difference gradient of images (B, C, H, W)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return (dx + dy) / 2


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).mean(1).sqrt()


class MoveRecorder:
    """Wraps a guide's ``on_step``: for every guided step, the move it returned and the clean estimate."""

    def __init__(self, guide: Any) -> None:
        self.steps: list[dict[str, Any]] = []  # of the running call
        self.records: list[dict[str, float]] = []
        self.samples = 0  # samples finished so far: each record names its sample
        inner = guide.on_step

        def on_step(step: Any) -> torch.Tensor | None:
            new = inner(step)
            if new is not None:
                b, _ = split_batch(step.latents, guide.batch)
                z = step.latents[:b].float()
                x0 = x0_estimate(step.scheduler, z, step.model_output[:b].float(), step.timestep)
                sigma = step_sigma(step.scheduler, step.index)
                self.steps.append(
                    {"index": step.index, "sigma": sigma, "move": new[:b].float() - z, "x0": x0}
                )
            return new

        guide.on_step = on_step

    def finish(self, final: torch.Tensor) -> None:
        """Turn the call's steps into per-sample records, given its final images (B, C, H, W) in [-1, 1]."""
        final_sharp = _sharpness(final)
        for s in self.steps:
            alpha = 1.0 / (1.0 + s["sigma"] ** 2) ** 0.5  # VP sample: alpha_t^2 + sigma_t^2 = 1
            sigma_t = s["sigma"] * alpha
            move, error, grad = _rms(s["move"]), _rms(s["x0"] - final), _sharpness(s["x0"])
            for i in range(len(move)):
                self.records.append(
                    {
                        "sample": self.samples + i,
                        "index": s["index"],
                        "sigma": s["sigma"],
                        "move_over_noise": float(move[i] / sigma_t),
                        "move_x0": float(move[i] / alpha),
                        "x0_error": float(error[i]),
                        "sharpness": float(grad[i] / final_sharp[i].clamp_min(1e-6)),
                        "shift_px": float(move[i] / alpha / grad[i].clamp_min(1e-6)),
                    }
                )
        self.samples += len(final)
        self.steps = []


def run(
    pipe: Any, clusters: list, name: str, steps: int, rounds: int
) -> tuple[list[dict[str, float]], list[bool]]:
    """One setting at one step count: its per-sample move records and whether each image matches its prompt."""
    guide = SETTINGS[name]()
    recorder = MoveRecorder(guide) if guide is not None else None
    hits = []
    for r in range(rounds):
        for c, cluster in enumerate(clusters):
            generators = [
                torch.Generator().manual_seed((r * 1009 + c) * 1009 + i) for i in range(len(cluster.prompts))
            ]
            kwargs = {
                "prompt": list(cluster.prompts),
                "num_inference_steps": steps,
                "guidance_scale": CFG,
                "generator": generators,
                "output_type": "pt",
            }
            images = (pipe(**kwargs) if guide is None else guide(pipe, **kwargs)).images.float()
            if recorder is not None:
                recorder.finish(images * 2 - 1)
            pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            hits += [bool(matches(check(im), cluster)) for im in pixels]
    return ([] if recorder is None else recorder.records), hits


def table(results: dict[tuple[str, int], tuple[list[dict[str, float]], list[bool]]]) -> list[str]:
    """Markdown lines: per setting, step count and guided step, the medians over samples; then the fidelities,
    with the images each setting loses and gains against its unguided twin (same prompt, same noise)."""
    lines = [
        "| setting | steps | guided step | sigma | move / sigma_t | move (x0 units) | x0 error | x0 sharpness "
        "| shift (px) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("sigma", "move_over_noise", "move_x0", "x0_error", "sharpness", "shift_px")
    for (name, steps), (records, _) in results.items():
        by_step: dict[int, list[dict[str, float]]] = defaultdict(list)
        for rec in records:
            by_step[int(rec["index"])].append(rec)
        for index, recs in sorted(by_step.items()):
            med = [statistics.median(r[k] for r in recs) for k in keys]
            cells = [f"{med[0]:.2f}"] + [f"{v:.3f}" for v in med[1:4]] + [f"{med[4]:.1f}", f"{med[5]:.2f}"]
            lines.append(f"| {name} | {steps} | {index} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| setting | steps | fidelity | vs none (points) | lost / gained vs none (images) "
        "| summed move / sigma_t (median sample) |",
        "|---|---|---|---|---|---|",
    ]
    for (name, steps), (records, hits) in results.items():
        base = results[("none", steps)][1]
        lost = sum(b and not h for h, b in zip(hits, base, strict=True))
        gained = sum(h and not b for h, b in zip(hits, base, strict=True))
        summed = _summed(records)
        lines.append(
            f"| {name} | {steps} | {np.mean(hits):.3f} | {100 * (np.mean(hits) - np.mean(base)):+.1f} | "
            f"{lost} / {gained} | {'-' if summed is None else f'{summed:.3f}'} |"
        )
    return lines


def _summed(records: list[dict[str, float]]) -> float | None:
    """The median over samples of the move / sigma_t summed over each sample's guided steps."""
    sums: dict[int, float] = defaultdict(float)
    for r in records:
        sums[int(r["sample"])] += r["move_over_noise"]
    return statistics.median(sums.values()) if sums else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="prompt set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--only", action="append", default=[], help='run only these rows (and none), e.g. "SPARKE()@4"'
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = load_pipeline("cpu")
    pipe.set_progress_bar_config(disable=True)
    clusters = W.prompt_clusters(args.clusters, args.prompts, seed=args.seed)
    results = {}
    rows = [(n, s) for n, s in ROWS if n == "none" or not args.only or f"{n}@{s}" in args.only]
    for name, steps in rows:
        results[(name, steps)] = run(pipe, clusters, name, steps, args.rounds)
        print(f"{name} at {steps} steps: fidelity {np.mean(results[(name, steps)][1]):.3f}", file=sys.stderr)
    command = "python benchmarks/few_step_move.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    n = args.clusters * args.prompts * args.rounds
    lines = [
        f"Command: `{command}`  ",
        f"Embedded shapes model, DPM-Solver++, CFG {CFG:g}, prompt set {args.seed}: {args.clusters} clusters x "
        f"{args.prompts} prompts x {args.rounds} rounds = {n} images per row; every='auto' (all 4 steps of a "
        f"4-step run guided, 5 of 10: 0, 2, 4, 6, 8); {args.threads} CPU thread(s), {time.perf_counter() - start:.0f} s.",
        "",
        *table(results),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
