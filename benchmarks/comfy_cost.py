"""The SPARKE Diversity node's cost per sampler step inside ComfyUI (issue 29): a KSampler run (euler,
classifier-free guidance 5, batch 4) of a tiny random-weight model through ComfyUI's own loader and sampler,
unpatched and patched by the node at its default strength with a bank of ``--bank`` earlier rows, per step.

Needs the ComfyUI source (``../shared/comfyui/ComfyUI`` or COMFYUI_PATH) and the ``comfy`` extra; uses the
tests' engine harness and tiny models (``tests/comfy_harness.py``, ``tests/comfy_models.py``). The tiny models
have real architectures at a fraction of the width or depth, so the denoiser's share of a step is smaller than
a real checkpoint's: the added milliseconds per step are the figure to carry over, not the ratio.

    python benchmarks/comfy_cost.py [--families sd15,sdxl,sd3] [--size 32] [--steps 4] [--reps 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_harness  # noqa: E402

BATCH = 4
CFG = 5.0


def run_seconds(engine, model, family: str, size: int, steps: int) -> float:
    import comfy_models

    pos, neg = comfy_models.conditioning(family, seed=1), comfy_models.conditioning(family, seed=2)
    latent = comfy_models.empty_latent(family, BATCH, size)
    start = time.perf_counter()
    with torch.inference_mode():
        engine.common_ksampler(model, 0, steps, CFG, "euler", "normal", pos, neg, latent, disable_noise=False)
    return time.perf_counter() - start


def _time_calls(patch, name: str) -> list[float]:
    """Seconds of every call of ``patch.<name>`` from now on (the sampler inside ``record`` excluded)."""
    seconds: list[float] = []
    original = getattr(patch, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        if name == "record":  # record(executor, ...) runs the whole sampler: time only what follows it
            executor, rest = args[0], args[1:]
            box = {}

            def sampler(*a, **k):
                box["start"] = time.perf_counter()
                out = executor(*a, **k)
                box["end"] = time.perf_counter()
                return out

            out = original(sampler, *rest, **kwargs)
            seconds.append(time.perf_counter() - start - (box["end"] - box["start"]))
            return out
        out = original(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    setattr(patch, name, timed)
    return seconds


def measure(engine, family: str, size: int, steps: int, reps: int, bank_rows: int) -> dict:
    import comfy_models
    import sparke
    from sparke.comfy import nodes as pack

    model = comfy_models.load(family)
    fam = comfy_models.FAMILIES[family]
    gen = torch.Generator().manual_seed(0)
    bank = pack.SparkeBank().bank(f"cost {family}", "reset", "", "user", False)[0]
    dims = (fam.channels * size * size, fam.pooled or fam.context[1])
    if bank_rows:
        rows = [torch.nn.functional.normalize(torch.randn(bank_rows, d, generator=gen), dim=1) for d in dims]
        bank.bank.add(*rows)
    patched = pack.SparkeDiversity().patch(model, pack.default_strength(), 0.0, 1.0, bank)[0]
    patch = patched.model_options["sampler_post_cfg_function"][-1].patch
    inside = _time_calls(patch, "step"), _time_calls(patch, "record")  # the patch's own seconds per call
    times: dict[str, list[float]] = {"unpatched": [], "patched": []}
    for m in (model, patched):
        run_seconds(engine, m, family, size, steps)  # warm-up
    for _ in range(reps):  # interleaved, so that a change of load on the machine hits both alike
        for name, m in (("unpatched", model), ("patched", patched)):
            if name == "patched":
                bank.bank.truncate(bank_rows)  # the same bank size in every repetition
            times[name].append(run_seconds(engine, m, family, size, steps))
    guided_per_run = patch.guided_steps / (reps + 1)
    per_step = {name: 1000 * statistics.median(t) / steps for name, t in times.items()}
    return {
        "family": family,
        "detected": fam.detected,
        "parameters_m": round(sum(v.numel() for v in model.model.state_dict().values()) / 1e6, 1),
        "latent": [fam.channels, size, size],
        "bank_rows": bank_rows,
        "guided_calls_per_run": guided_per_run,
        "unpatched_ms_per_step": round(per_step["unpatched"], 1),
        "patched_ms_per_step": round(per_step["patched"], 1),
        "added_ms_per_step": round(per_step["patched"] - per_step["unpatched"], 1),
        "ratio": round(per_step["patched"] / per_step["unpatched"], 3),
        "guided_step_ms": round(1000 * statistics.median(inside[0]), 1),  # one post-CFG call of the patch
        "record_ms": round(1000 * statistics.median(inside[1]), 1),  # adding a run's images to the bank
        "patch_ms_per_step": round(
            1000 * (statistics.median(inside[0]) * guided_per_run + statistics.median(inside[1])) / steps, 1
        ),
        "sparke": sparke.__version__,
        "strength": pack.default_strength(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15,sdxl,sd3")
    parser.add_argument("--size", type=int, default=32, help="latent side (x8 pixels)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bank", type=int, default=256, help="bank rows before each patched run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # one thread by default: on the shared 2-core machine a second one made the guide's small convolutions 30x
    # slower under load (waiting for the other thread, not working)
    torch.set_num_threads(args.threads)
    path = comfy_harness.comfyui_path()
    if path is None:
        sys.exit(comfy_harness.SKIP_REASON)
    engine = comfy_harness.import_engine(path)
    rows = []
    for family in args.families.split(","):
        rows.append(measure(engine, family, args.size, args.steps, args.reps, args.bank))
        print(json.dumps(rows[-1]), flush=True)
    print(
        "| family (detected) | parameters | latent | bank | unpatched ms/step | patched ms/step | patch ms/step (call, record) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['family']} ({r['detected']}) | {r['parameters_m']}M | {'x'.join(map(str, r['latent']))} | "
              f"{r['bank_rows']} | {r['unpatched_ms_per_step']} | {r['patched_ms_per_step']} | "
              f"{r['patch_ms_per_step']} ({r['guided_step_ms']}, {r['record_ms']}) |")  # fmt: skip
    if args.out:
        meta = dict(machine=platform.machine(), processor=platform.processor(), torch=torch.__version__,
                    threads=torch.get_num_threads(), batch=BATCH, cfg=CFG, sampler="euler", steps=args.steps,
                    reps=args.reps)  # fmt: skip
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
