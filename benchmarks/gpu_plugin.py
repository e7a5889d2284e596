"""Per-image cost of the SPARKE plug-in on a real diffusers pipeline, with the defaults and each bank (issue 10.5).

    python3 benchmarks/gpu_plugin.py              # H100/H200: SD-1.5 size, n = 0, 1e4, 1e5, 1e6 (about 6 minutes)
    python3 benchmarks/gpu_plugin.py --sdxl       # SDXL size
    python3 benchmarks/gpu_plugin.py --tiny       # CPU smoke test with tiny sizes (a minute)

A real ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` with --sdxl) is built in memory with random
weights at the real model's size (UNet, VAE, CLIP text encoders; the tokenizer has a tiny in-memory vocabulary),
fp16 on CUDA, 50 DPM-Solver++ steps, CFG 7.5, one image per call, VAE decode included; nothing is downloaded.

For each bank size n the variants are timed interleaved, A/B/C/... in every round (this hardware drifts
10-20% between runs), and each variant's median and spread (min, max) over the rounds are reported:
- ``vanilla``: the pipeline alone;
- ``default``: ``sparke.SPARKE(scale=0.03, every=10)`` exactly as the README shows it (the bank it makes
  itself, pre-filled with n rows after it has moved to the pipeline's device);
- ``exact``: the same with ``bank=sparke.Bank(device, float16)``;
- ``indexed``: the same with ``bank=sparke.IndexedBank(...)`` on the pipeline's device (flat GPU search);
- ``exact-cpu`` (n <= 10^5): a float32 Bank on the CPU, the old default.
Pre-filled rows are random unit vectors; each bank's kept normaliser (its pair sum) is set, not computed
(its value does not change the cost, computing it is a one-off O(n^2 d)). Results: printed, and written as
JSON to --out (default benchmarks/results/<device>-<date>-plugin.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import sparke  # noqa: E402
from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT  # noqa: E402
from sparke.guidance.prompts import encode_prompts  # noqa: E402
from tiny_pipelines import clip_tokenizer  # noqa: E402  (an in-memory tokenizer: no hub)

PROMPT = "a photo of a red car"


# -- the pipeline --------------------------------------------------------------------------------------------
def _text_encoder(hidden: int, layers: int, heads: int, projection: int | None, vocab: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        eos_token_id=vocab - 1,
        bos_token_id=vocab - 2,
        pad_token_id=vocab - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_pipeline(kind: str, tiny: bool) -> Any:
    """A random-weight pipeline of the real model's size ("sd" or "sdxl"), or tiny sizes for the CPU."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    tokenizer = clip_tokenizer()
    vocab = len(tokenizer)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    if tiny:
        blocks, vae_blocks, layers, head, text = (32, 64), (32, 64), 1, 8, (32, 2, 4)
    else:
        blocks = (320, 640, 1280) if kind == "sdxl" else (320, 640, 1280, 1280)
        vae_blocks, layers, head, text = (128, 256, 512, 512), 2, 8, (768, 12, 12)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        layers_per_block=layers,
        norm_num_groups=32,
    )
    attention = len(blocks) - 1
    if kind == "sd":  # SD 1.5: attention in the outer levels, none in the innermost
        down = ("CrossAttnDownBlock2D",) * attention + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * attention
        text_encoder = _text_encoder(*text, projection=None, vocab=vocab)
        unet = UNet2DConditionModel(
            block_out_channels=blocks,
            layers_per_block=layers,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=text[0],
            attention_head_dim=head,
            norm_num_groups=32,
        )
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * attention  # SDXL: none in the outermost level
    up = ("CrossAttnUpBlock2D",) * attention + ("UpBlock2D",)
    hidden_2 = 64 if tiny else 1280
    encoder_1 = _text_encoder(*text, projection=None, vocab=vocab)
    encoder_2 = _text_encoder(hidden_2, text[1], max(4, hidden_2 // 64), projection=hidden_2, vocab=vocab)
    cross = text[0] + hidden_2
    unet = UNet2DConditionModel(
        block_out_channels=blocks,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross,
        attention_head_dim=(2, 4) if tiny else (5, 10, 20),
        transformer_layers_per_block=(1, 1) if tiny else (1, 2, 10),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8 if tiny else 256,
        projection_class_embeddings_input_dim=hidden_2 + 6 * (8 if tiny else 256),
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder_1,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


# -- banks ---------------------------------------------------------------------------------------------------
def unit_rows(m: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    rows = torch.randn(m, d, device=device, generator=g)
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)


def prefill(bank: Any, n: int, d: int, e: int, device: torch.device, chunk: int = 8192) -> Any:
    """Add n random unit rows (image dim d, prompt dim e) to ``bank`` and set its kept pair sum."""
    if n == 0:
        return bank
    if isinstance(getattr(bank, "inner", bank), sparke.Bank):  # an AutoBank fills the bank it holds now
        getattr(bank, "inner", bank).reserve(n, d, e)  # one allocation of the final size, no regrowth
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        bank.add(unit_rows(m, d, device, start), unit_rows(m, e, device, 10**8 + start))
    inner = getattr(bank, "inner", bank)
    # n distinct random unit rows: the pair sum is about n (see the module doc)
    if isinstance(inner, sparke.Bank):
        inner.set_pair_sum(float(n), sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT)
    else:
        inner.set_pair_sum(float(n))
    return bank


def variants(n: int, dims: tuple[int, int], device: torch.device, with_cpu: bool) -> dict[str, Any]:
    """name -> a guide (None = the pipeline alone), each with a bank of n rows."""
    d, e = dims
    half = torch.float16 if device.type == "cuda" else torch.float32
    guides: dict[str, Any] = {"vanilla": None}
    default = sparke.SPARKE(scale=0.03, every=10)
    default.bank.to(device, half)  # what its first call does; done here so that the rows can be pre-filled
    guides["default"] = default
    guides["exact"] = sparke.SPARKE(scale=0.03, every=10, bank=sparke.Bank(device=device, dtype=half))
    try:
        indexed = sparke.IndexedBank(d, e, device=device, dtype=half)
        guides["indexed"] = sparke.SPARKE(scale=0.03, every=10, bank=indexed)
    except ImportError as error:  # faiss missing: the flat GPU search needs none, the CPU path does
        print(f"   indexed skipped: {error}")
    if with_cpu:
        guides["exact-cpu"] = sparke.SPARKE(scale=0.03, every=10, bank=sparke.Bank())
    for guide in guides.values():
        if guide is not None:
            prefill(guide.bank, n, d, e, guide.bank.device)
    return guides


# -- timing --------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_image(pipe: Any, guide: Any, steps: int, size: int, seed: int) -> float:
    kwargs = dict(
        prompt=PROMPT,
        num_inference_steps=steps,
        guidance_scale=7.5,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    )
    device = pipe._execution_device
    sync(device)
    start = time.perf_counter()
    if guide is None:
        pipe(**kwargs)
    else:
        guide(pipe, **kwargs)
    sync(device)
    return time.perf_counter() - start


def measure(
    pipe: Any, guides: dict[str, Any], rounds: int, steps: int, size: int
) -> dict[str, dict[str, float]]:
    """Interleaved rounds: every variant once per round; median, min and max seconds per image."""
    times: dict[str, list[float]] = {name: [] for name in guides}
    for guide in guides.values():  # warm-up: kernels, allocator, the banks' lazily built state
        one_image(pipe, guide, steps, size, seed=0)
    for r in range(rounds):
        for name, guide in guides.items():
            times[name].append(one_image(pipe, guide, steps, size, seed=r + 1))
    base = statistics.median(times["vanilla"])
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "overhead_pct": 100 * (statistics.median(t) / base - 1),
        }
        for name, t in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdxl", action="store_true", help="SDXL size (1024 px) instead of SD 1.5 (512 px)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (a smoke test)")
    parser.add_argument("--ns", default=None, help="bank sizes, comma-separated (default 0,1e4,1e5,1e6)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; --tiny 4)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        parser.error("no CUDA device: run with --tiny for the CPU smoke test")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: more threads only spin on a shared CPU
    kind = "sdxl" if args.sdxl else "sd"
    ns = [int(float(v)) for v in (args.ns or ("0,64,256" if args.tiny else "0,1e4,1e5,1e6")).split(",") if v]
    rounds = args.rounds or (1 if args.tiny else 5)
    steps = args.steps or (4 if args.tiny else 50)
    size = 32 if args.tiny else (1024 if args.sdxl else 512)
    pipe = build_pipeline(kind, args.tiny)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device, torch.float16 if device.type == "cuda" else torch.float32)
    prompt_dim = encode_prompts("pipeline", pipe, [PROMPT]).shape[1]  # what the guide's prompt rows will be
    dims = (pipe.unet.config.in_channels * (size // pipe.vae_scale_factor) ** 2, prompt_dim)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"{name}: {kind} pipeline, {steps} steps, {size} px, image features {dims[0]}, prompt features {dims[1]}"
    )
    rows = []
    for n in ns:
        guides = variants(n, dims, device, with_cpu=n <= 10**5)
        result = measure(pipe, guides, rounds, steps, size)
        kinds = {k: type(g.bank).__name__ for k, g in guides.items() if g is not None}
        rows.append({"n": n, "per_image": result, "bank_kind": kinds})
        cells = ", ".join(f"{k} {v['median_s']:.3f} s ({v['overhead_pct']:+.1f}%)" for k, v in result.items())
        print(f"n = {n:>8}: {cells}", flush=True)
        del guides
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record = {
        "device": name,
        "pipeline": kind,
        "steps": steps,
        "size": size,
        "rounds": rounds,
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    out = (
        args.out
        or ROOT / "benchmarks" / "results" / f"{name.replace(' ', '-')}-{record['date'][:10]}-plugin.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
