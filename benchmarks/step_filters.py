"""Cost of the step filters per guided step: ``motion_component``, ``layout_component`` and the warp (the
displacement field, then the clean estimate resampled by it), for the embedded model's batch and SDXL-size
latents. Prints the median of repeated timings, in milliseconds, on this machine's CPU (one thread) or GPU.

    python benchmarks/step_filters.py [--device cuda] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparke.guidance.filters import displacement, layout_component, lowpass, motion_component, warp

SHAPES = {"embedded 8x3x32x32": (8, 3, 32, 32), "SDXL 4x4x128x128": (4, 4, 128, 128)}


def _median_ms(fn, repeats: int, device: str) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def _row(
    g: torch.Tensor, image: torch.Tensor, factor: torch.Tensor, repeats: int, device: str
) -> list[float]:
    filters = [
        lambda: motion_component(g, image, 2.0),
        lambda: layout_component(g, image),
        lambda: warp(image, factor * displacement(g, image, 2.0)),
        lambda: warp(image, factor * displacement(g, image, "global")),
    ]
    return [_median_ms(fn, repeats, device) for fn in filters]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print(f"device {args.device}; median of {args.repeats} calls, ms")
    print("| latents | motion 2 | motion global | motion 2 + warp | motion global + warp |")
    print("|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        image = lowpass(torch.randn(shape, generator=gen), 1.5).to(args.device)
        g = torch.randn(shape, generator=gen).to(args.device)
        factor = torch.full((shape[0], 1, 1, 1), 0.5, device=args.device)
        cells = _row(g, image, factor, args.repeats, args.device)
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
