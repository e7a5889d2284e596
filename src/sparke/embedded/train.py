"""Train the embedded shapes UNet (``python -m sparke.embedded.train --out DIR``).

Objective: DDPM epsilon prediction, 1000-step linear beta schedule (1e-4..0.02), uniform
timesteps, MSE. Data: for each example a caption is drawn from a pool of unique captions
(in proportion to how often the world's captioner produced it), a scene that agrees with it
is sampled (free attributes at random) and rendered on the fly on the training device. The
condition is the caption's MiniLM embedding, precomputed once for the whole pool; 10% of
the captions are dropped to "" (whose embedding is the CFG unconditional branch).
Optimiser AdamW (lr 3e-4, 500 warm-up steps, cosine to 10%), EMA 0.999 from step 0 with
the usual (1 + n) / (10 + n) ramp, bf16 autocast on CUDA. Output: ``unet.safetensors``
(EMA weights, fp16), ``unet_config.json`` and ``train_info.json`` (settings, time, hardware,
loss curve).

Shipped weights (``weights/train_info.json`` has the loss curve): one NVIDIA H200, torch
2.11 + CUDA 13, ``--steps 12000 --minutes 5.0`` (the time budget stopped it at step 3124,
batch 512, i.e. 1.6M examples, 300 s of training, ~10 steps/s), final training loss 0.0037,
8.8M parameters, EMA weights stored as fp16 (17.7 MB). The caption pool (44,329 unique
captions from 60,000 draws, MiniLM-embedded on 2 CPU cores in ~14 min) was built beforehand
with ``sparke.embedded.data.load_or_build_pool`` and carried to the GPU. On 2 CPU cores one
step of batch 512 takes tens of seconds: CPU retraining is impractical beyond smoke tests.
``--init`` resumes from saved weights. Sampling quality owes as much to the sampler as to training:
the shipped pipeline thresholds each step's predicted image (``pipeline.SAMPLER_CONFIG``), which took the
unguided shape+colour match at CFG 4 from 0.84 to 0.99 at 10 steps (192 images) with these weights.
Deterministic for a fixed ``--steps`` on one device type (CUDA kernels may differ in the
last bits between GPU models); ``--minutes`` stops early on a time budget.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sparke.embedded.data import load_or_build_pool, render_batch, sample_scenes
from sparke.embedded.pipeline import SCHEDULER_CONFIG, TINY_UNET_CONFIG, UNET_CONFIG, build_unet


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"


def train(
    out: str | Path,
    steps: int = 8000,
    batch_size: int = 512,
    lr: float = 3e-4,
    device: str = "cpu",
    seed: int = 0,
    pool_path: str | Path | None = "runs/embedded/pool.safetensors",
    pool_draws: int = 60000,
    p_uncond: float = 0.1,
    ema_decay: float = 0.999,
    minutes: float | None = None,
    tiny: bool = False,
    log_every: int = 100,
    init: str | Path | None = None,
) -> dict:
    """Train and write the EMA UNet to ``out``; returns the info dict also saved as train_info.json."""
    from safetensors.torch import save_file

    t0 = time.time()
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pool = load_or_build_pool(pool_path, pool_draws, seed)
    embeds = pool.embeds.to(dev, torch.float32)
    probs = pool.freq / pool.freq.sum()
    probs[0] = 0.0  # the empty caption only enters through dropout
    probs = probs / probs.sum()

    config = TINY_UNET_CONFIG if tiny else UNET_CONFIG
    unet = build_unet(config).to(dev).train()
    ema = build_unet(config).to(dev).eval()
    if init is not None:  # resume from saved (EMA, fp16) weights
        from safetensors.torch import load_file

        unet.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()})
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())

    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0, fused=dev.type == "cuda")
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())
    warm = min(500, steps // 10)

    def lr_at(i: int) -> float:
        """Warm-up, then cosine to 10%; progress is the larger of step and time fractions."""
        if i < warm:
            return lr * (i + 1) / warm
        prog = (i - warm) / max(1, steps - warm)
        if minutes is not None:
            prog = max(prog, (time.time() - t_start) / (minutes * 60))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0))))

    betas = torch.linspace(
        SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"], 1000, dtype=torch.float64
    )
    abar = torch.cumprod(1 - betas, 0).to(dev, torch.float32)
    uncond_idx = 0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    losses: list[tuple[int, float]] = []
    t_start = time.time()  # the time budget counts training only, not the pool
    run_loss: torch.Tensor | float = 0.0
    n_run, done = 0, 0
    for step in range(steps):
        idx = rng.choice(len(pool), size=batch_size, p=probs)
        scenes = sample_scenes(
            rng,
            pool.shape[idx],
            pool.colour[idx],
            pool.count[idx],
            pool.size[idx],
            pool.background[idx],
            pool.position[idx],
        )
        x0 = render_batch(scenes, dev)
        drop = rng.random(batch_size) < p_uncond
        idx = np.where(drop, uncond_idx, idx)
        c = embeds[torch.as_tensor(idx, device=dev)]
        t = torch.randint(0, 1000, (batch_size,), device=dev)
        noise = torch.randn_like(x0)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast:
            pred = unet(xt, t, encoder_hidden_states=c[:, None], class_labels=c, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.step()
        d = ema_decay if init is not None else min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, unet_params, 1 - d)
        run_loss = run_loss + loss.detach()  # stays on the device: no sync per step
        n_run += 1
        done = step + 1
        if (step + 1) % log_every == 0:
            losses.append((step + 1, float(run_loss) / n_run))
            print(
                f"step {step + 1} loss {losses[-1][1]:.4f} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s",
                flush=True,
            )
            run_loss, n_run = 0.0, 0
        if minutes is not None and time.time() - t_start > minutes * 60:
            print(f"time budget reached at step {step + 1}", flush=True)
            break

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in ema.state_dict().items()}
    save_file(sd, str(out / "unet.safetensors"))
    (out / "unet_config.json").write_text(
        json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, indent=1)
    )
    info = {
        "steps": done,
        "steps_planned": steps,
        "batch_size": batch_size,
        "lr": lr,
        "p_uncond": p_uncond,
        "ema_decay": ema_decay,
        "seed": seed,
        "objective": "DDPM epsilon, linear betas 1e-4..0.02, 1000 steps",
        "params": n_params,
        "pool_captions": len(pool),
        "init": str(init) if init is not None else None,
        "seconds": round(time.time() - t0, 1),
        "hardware": _hardware(dev),
        "torch": torch.__version__,
        "loss": losses,
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/embedded/unet")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default="runs/embedded/pool.safetensors", help="cached caption embeddings")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this many minutes")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (smoke tests)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--init", default=None, help="start from these unet.safetensors weights (resume)")
    a = ap.parse_args(argv)
    info = train(
        a.out,
        a.steps,
        a.batch_size,
        a.lr,
        a.device,
        a.seed,
        a.pool,
        minutes=a.minutes,
        tiny=a.tiny,
        log_every=a.log_every,
        init=a.init,
    )
    print(json.dumps({k: v for k, v in info.items() if k != "loss"}))


if __name__ == "__main__":
    main()
