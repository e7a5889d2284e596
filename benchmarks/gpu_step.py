"""The SPARKE guided step against the denoiser step on one GPU, with CUDA events (issue 6, point 5).

    python3 benchmarks/gpu_step.py            # H100/H200: about 3-5 minutes, nothing downloaded
    python3 benchmarks/gpu_step.py --tiny     # CPU smoke test with tiny sizes (seconds)

Measures, interleaved A/B/A/B (each round times every variant once; medians over rounds, since this
hardware drifts 10-20% between consecutive runs):
- ``unet``: one denoiser call of an SD-1.5-sized UNet (random weights, fp16, batch 2 = one image with CFG,
  64x64x4 latents), and of an SDXL-sized UNet (batch 2, 128x128x4) unless --skip-sdxl;
- the guided step ``Bank.direction`` (Cond-RKE, one latent row d = 16,384 / 65,536, prompt rows of 768)
  against banks of n rows stored in fp32 / fp16 / bf16, plus fp16 without the finiteness check (no host
  sync at all) and fp16 with a 256-column random projection for the kernel weights; the ``IndexedBank``
  when FAISS is importable;
- end to end: seconds per image of a 50-step loop of denoiser calls with and without guidance every 10
  steps (n = 10^4, fp16), interleaved.

The denoiser is diffusers' UNet2DConditionModel built from an in-memory config when diffusers is
importable, else a plain-torch UNet of the same layout and parameter count (benchmarks/_unet.py); the JSON
says which. The bank's kept normaliser is set, not computed (its value does not change the cost; computing
it exactly is a one-off O(n^2 d)). Results: printed, and written as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _unet  # noqa: E402

import sparke  # noqa: E402
from sparke.core import order2 as fast  # noqa: E402

SIGMA_X, SIGMA_Y, PROMPT_DIM = 0.8, 0.3, 768


class Timer:
    """Queue-side timing: CUDA events on a GPU (no sync inside the timed region), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, object, object]] = []
        self.samples: dict[str, list[float]] = {}

    def time(self, name: str, fn) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self.samples.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))

    def collect(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            for name, start, end in self.pending:
                self.samples.setdefault(name, []).append(start.elapsed_time(end))
            self.pending = []
        return {name: statistics.median(v) for name, v in self.samples.items()}


def unit_rows(n: int, d: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=gen), dim=1).to(dtype)


def filled_bank(n: int, d: int, dtype: torch.dtype, device: torch.device, chunk: int = 2048) -> sparke.Bank:
    """A Bank of n random unit rows, allocated once at its final size (no geometric-growth copies)."""
    bank = sparke.Bank(device=device, dtype=dtype)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        bank.add(
            unit_rows(m, d, device, torch.float32, start),
            unit_rows(m, PROMPT_DIM, device, torch.float32, 10**7 + start),
        )
        if start == 0:
            bank.reserve(n - m, d, PROMPT_DIM)  # one allocation of the final size
    bank.set_pair_sum(float(n), sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y)  # see the module doc
    return bank


def free_gib(device: torch.device) -> float:
    return torch.cuda.mem_get_info(device)[0] / 2**30 if device.type == "cuda" else float("inf")


def measure(kind: str, ns: list[int], args, device, out: dict) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the previous model's cached blocks: the memory checks read free memory
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model, backend = _unet.build(kind, args.unet_backend, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    kw = _unet.inputs(kind, 2 * args.images, device, dtype, backend)
    size = _unet.LAYOUTS[kind]["size"]
    d = 4 * size * size
    print(f"\n== {kind}: {backend} UNet, {params / 1e6:.0f} M parameters, latents {size}x{size}x4 (d = {d})")

    @torch.inference_mode()
    def unet_step():
        model(**kw)

    x = unit_rows(args.images, d, device, torch.float32, 10**6)
    y = unit_rows(args.images, PROMPT_DIM, device, torch.float32, 10**6 + 1)
    for n in ns:
        variants = {"unet": unet_step}
        banks = {}
        for name, bdtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            need = n * (d + PROMPT_DIM) * torch.finfo(bdtype).bits / 8 / 2**30
            if need > free_gib(device) - 6:
                print(f"   skip exact-{name} at n={n}: needs {need:.1f} GiB, {free_gib(device):.1f} free")
                continue
            banks[name] = filled_bank(n, d, bdtype, device)
            bank = banks[name]
            variants[f"exact-{name}"] = lambda b=bank: b.direction(
                x, y, sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y
            )
        if "fp16" in banks:
            b16 = banks["fp16"]
            variants["exact-fp16-nosync"] = lambda b16=b16: fast.bank_direction(
                b16, x, y, sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y, check_finite=False
            )
        indexed = None
        try:
            import faiss  # noqa: F401

            indexed = sparke.IndexedBank(d, PROMPT_DIM, device=device, dtype=torch.float16)
        except ImportError:
            print("   IndexedBank skipped: faiss is not importable here")
        if indexed is not None:
            t0 = time.perf_counter()
            for start in range(0, n, 4096):
                m = min(4096, n - start)
                indexed.add(
                    unit_rows(m, d, device, torch.float32, start),
                    unit_rows(m, PROMPT_DIM, device, torch.float32, 10**7 + start),
                )
            print(f"   IndexedBank n={n}: built in {time.perf_counter() - t0:.1f} s")
            variants["indexed-fp16"] = lambda ib=indexed: ib.direction(x, y)
        timer = Timer(device)
        for fn in variants.values():  # warm-up: workspaces, cuBLAS handles, autotuning
            fn()
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        for _ in range(args.reps):
            for name, fn in variants.items():
                timer.time(name, fn)
        if "fp16" in banks and "exact-fp16-proj256" not in variants:
            # the projected variant changes the fp16 bank's workspace: timed after the others
            b16 = banks["fp16"]
            fast.bank_direction(b16, x, y, sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y, project_dim=256)
            for _ in range(args.reps):
                timer.time("unet", unet_step)
                timer.time(
                    "exact-fp16-proj256",
                    lambda b16=b16: fast.bank_direction(
                        b16, x, y, sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y, project_dim=256
                    ),
                )
        med = timer.collect()
        row = {"kind": kind, "backend": backend, "d": d, "n": n, "images": args.images, "ms": med}
        row["percent_of_unet"] = {k: 100 * v / med["unet"] for k, v in med.items() if k != "unet"}
        out["steps"].append(row)
        print(f"   n = {n:>7}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()))
        print("              " + ", ".join(f"{k} {v:.2f}%" for k, v in row["percent_of_unet"].items()))
        if kind == args.e2e_kind and n == ns[0] and "fp16" in banks:
            out["end_to_end"] = end_to_end(model, kw, banks["fp16"], x, y, args, device)
        del banks, indexed, variants
        if device.type == "cuda":
            torch.cuda.empty_cache()


def end_to_end(model, kw, bank, x, y, args, device) -> dict:
    """Seconds per image of ``steps`` denoiser calls, guided every 10 steps or not, interleaved A/B."""
    latents = kw["sample"]

    @torch.inference_mode()
    def run(guided: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        z = latents.clone()
        for step in range(args.steps):
            model(**{**kw, "sample": z})
            if guided and step % 10 == 0:
                flat = z[: args.images].reshape(args.images, -1).float()
                direction = bank.direction(flat, y, sigma_image=SIGMA_X, sigma_prompt=SIGMA_Y)
                z[: args.images] += 0.03 * direction.reshape(z[: args.images].shape).to(z.dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(False), run(True)
    plain, guided = [], []
    for _ in range(args.e2e_reps):
        plain.append(run(False))
        guided.append(run(True))
    result = {
        "n": len(bank),
        "steps": args.steps,
        "s_per_image_plain": statistics.median(plain),
        "s_per_image_guided": statistics.median(guided),
    }
    result["overhead_percent"] = 100 * (result["s_per_image_guided"] / result["s_per_image_plain"] - 1)
    print(
        f"   end to end ({args.steps} steps, guided every 10, n = {len(bank)} fp16): "
        f"{result['s_per_image_plain']:.3f} s plain, {result['s_per_image_guided']:.3f} s guided "
        f"({result['overhead_percent']:+.1f}%)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on whatever device (CPU smoke test)")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument(
        "--images", type=int, default=1, help="images per call (the UNet batch is twice that)"
    )
    parser.add_argument("--unet-backend", choices=["auto", "diffusers", "torch"], default="auto")
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--e2e-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mm_out_dtype": {
            str(t).removeprefix("torch."): fast.mm_out_dtype_supported(device, t)
            for t in (torch.float16, torch.bfloat16)
        },
        "steps": [],
    }
    print(f"device: {name}, torch {torch.__version__}, fp16 products with fp32 output: {out['mm_out_dtype']}")
    t0 = time.perf_counter()
    if args.tiny:
        if device.type == "cpu":
            torch.set_num_threads(1)  # tiny ops: OpenMP wake-ups cost more than they save on a busy CPU
        args.reps, args.steps, args.e2e_reps = min(args.reps, 3), min(args.steps, 12), 1
        args.e2e_kind = "tiny"
        measure("tiny", [64, 256], args, device, out)
    else:
        args.e2e_kind = "sd15"
        measure("sd15", [10_000, 100_000], args, device, out)
        if not args.skip_sdxl:
            measure("sdxl", [100_000], args, device, out)
    out["wall_s"] = time.perf_counter() - t0
    print(f"\nwall time {out['wall_s']:.0f} s")
    if args.out is None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        tag = "tiny-cpu" if args.tiny else name.lower().replace(" ", "-")
        args.out = Path(__file__).resolve().parent / "results" / f"gpu-step-{tag}-{stamp}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
