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

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparke.embedded.data import CaptionPool, load_or_build_pool, render_batch, sample_scenes
from sparke.embedded.pipeline import SCHEDULER_CONFIG, TINY_UNET_CONFIG, UNET_CONFIG, build_unet
from sparke.embedded.training import save_trained, training_parser


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"


def _diffusion(dev: torch.device) -> tuple[torch.Tensor, Any]:
    """(alpha-bar of the 1000 training noise levels on ``dev``, the autocast context: bf16 on CUDA, none on
    CPU); on CUDA also allows TF32 matmuls."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    betas = torch.linspace(
        SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"], 1000, dtype=torch.float64
    )
    abar = torch.cumprod(1 - betas, 0).to(dev, torch.float32)
    if dev.type == "cuda":
        return abar, torch.autocast("cuda", dtype=torch.bfloat16)
    return abar, torch.autocast("cpu", enabled=False)


def _caption_draws(pool: CaptionPool) -> np.ndarray:
    """Probabilities of drawing each pool caption: its frequency, the empty caption never (dropout adds it)."""
    probs = pool.freq / pool.freq.sum()
    probs[0] = 0.0
    return probs / probs.sum()


def _models(
    config: dict, dev: torch.device, init: str | Path | None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the trained UNet, its EMA copy), from ``init``'s saved (EMA, fp16) weights when given."""
    unet = build_unet(config).to(dev).train()
    ema = build_unet(config).to(dev).eval()
    if init is not None:
        from safetensors.torch import load_file

        unet.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()})
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    return unet, ema


class _Schedule:
    """The learning rate at a step: warm-up, then cosine to 10%; progress is the larger of the step and the
    time fractions (``minutes``: the time budget, counted from ``start``)."""

    def __init__(self, lr: float, steps: int, minutes: float | None, start: float) -> None:
        self.lr, self.steps, self.minutes, self.start = lr, steps, minutes, start
        self.warm = min(500, steps // 10)

    def __call__(self, i: int) -> float:
        if i < self.warm:
            return self.lr * (i + 1) / self.warm
        prog = (i - self.warm) / max(1, self.steps - self.warm)
        if self.minutes is not None:
            prog = max(prog, (time.time() - self.start) / (self.minutes * 60))
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0))))

    def out_of_time(self) -> bool:
        return self.minutes is not None and time.time() - self.start > self.minutes * 60


def _noised_batch(
    rng: np.random.Generator,
    pool: CaptionPool,
    probs: np.ndarray,
    embeds: torch.Tensor,
    abar: torch.Tensor,
    batch_size: int,
    p_uncond: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch: (noised images x_t, timesteps t, caption embeddings c, the noise to predict)."""
    dev = embeds.device
    idx = rng.choice(len(pool), size=batch_size, p=probs)
    fields = (pool.shape, pool.colour, pool.count, pool.size, pool.background, pool.position)
    x0 = render_batch(sample_scenes(rng, *(f[idx] for f in fields)), dev)
    drop = rng.random(batch_size) < p_uncond
    idx = np.where(drop, 0, idx)  # caption 0 is the empty one: the CFG unconditional branch
    c = embeds[torch.as_tensor(idx, device=dev)]
    t = torch.randint(0, 1000, (batch_size,), device=dev)
    noise = torch.randn_like(x0)
    a = abar[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, c, noise


def _optimiser_step(unet: Any, opt: Any, batch: tuple, autocast: Any, lr: float) -> torch.Tensor:
    """One AdamW step on a noised batch (xt, t, c, noise) at learning rate ``lr``; the loss, on the device."""
    xt, t, c, noise = batch
    with autocast:
        pred = unet(xt, t, encoder_hidden_states=c[:, None], class_labels=c, return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(pred.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss.detach()


def _run_facts(unet: Any, pool: Any, init: Any, t0: float, dev: torch.device) -> dict[str, Any]:
    """What train_info.json records about the run besides its settings and losses."""
    return {
        "objective": "DDPM epsilon, linear betas 1e-4..0.02, 1000 steps",
        "params": sum(p.numel() for p in unet.parameters()),
        "pool_captions": len(pool),
        "init": str(init) if init is not None else None,
        "seconds": round(time.time() - t0, 1),
        "hardware": _hardware(dev),
        "torch": torch.__version__,
    }


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
    t0 = time.time()
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    abar, autocast = _diffusion(dev)
    pool = load_or_build_pool(pool_path, pool_draws, seed)
    embeds, probs = pool.embeds.to(dev, torch.float32), _caption_draws(pool)
    config = TINY_UNET_CONFIG if tiny else UNET_CONFIG
    unet, ema = _models(config, dev, init)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0, fused=dev.type == "cuda")
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())  # EMA: lerp towards the weights
    schedule = _Schedule(lr, steps, minutes, time.time())  # the time budget counts training, not the pool
    losses: list[tuple[int, float]] = []
    run_loss: torch.Tensor | float = 0.0
    n_run, done = 0, 0
    for step in range(steps):
        batch = _noised_batch(rng, pool, probs, embeds, abar, batch_size, p_uncond)
        loss = _optimiser_step(unet, opt, batch, autocast, schedule(step))
        d = ema_decay if init is not None else min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, unet_params, 1 - d)
        run_loss = run_loss + loss  # stays on the device: no sync per step
        n_run, done = n_run + 1, step + 1
        if done % log_every == 0:
            losses.append((done, float(run_loss) / n_run))
            rate = opt.param_groups[0]["lr"]
            print(f"step {done} loss {losses[-1][1]:.4f} lr {rate:.2e} {time.time() - t0:.0f}s", flush=True)
            run_loss, n_run = 0.0, 0
        if schedule.out_of_time():
            print(f"time budget reached at step {done}", flush=True)
            break
    settings = dict(steps_planned=steps, batch_size=batch_size, lr=lr, p_uncond=p_uncond, ema_decay=ema_decay)
    info = {"steps": done, **settings, "seed": seed, **_run_facts(unet, pool, init, t0, dev), "loss": losses}
    out = save_trained(ema, out, "unet.safetensors", "train_info.json", info)
    (out / "unet_config.json").write_text(
        json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, indent=1)
    )
    return info


def main(argv: list[str] | None = None) -> None:
    ap = training_parser(__doc__.split("\n")[0], out="runs/embedded/unet", steps=8000, batch_size=512)
    ap.add_argument("--lr", type=float, default=3e-4)
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
