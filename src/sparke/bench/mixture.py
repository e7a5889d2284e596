"""The paper's 2-D experiment (its Figure 7, shown there only as pictures), with numbers.

Data: 8 Gaussian modes (std 0.15) on a circle of radius 2; the "prompt" ``group k`` (k = 0, 1) selects the
modes k, k + 2, k + 4, k + 6 (every other one) with unequal weights 0.55, 0.25, 0.12, 0.08, so classifier-free
guidance tends to collapse a prompt onto its heavy mode, and each mode's neighbours belong to the other prompt.
A small MLP denoiser (epsilon prediction, DDPM linear schedule, conditioning dropped 10% of the time for CFG)
ships as ``mixture.safetensors`` (550 KB; ``train_denoiser`` retrains it, which takes minutes on a loaded
CPU and seconds on a GPU); the prompt enters as
a one-hot vector, given to the MLP as ``encoder_hidden_states`` (B, 1, 3) so that CADS's pre-hook applies,
and used as the prompt features of the prompt-aware methods.

``MixturePipeline`` is a minimal diffusers-style pipeline (``unet``, ``scheduler``, ``__call__`` that calls
``scheduler.step``), so every method attaches through the same ``sparke.guidance.attach`` mechanism.

Measures per method: mode coverage (fraction of the prompt's modes with at least one sample within 3 std),
mode entropy (entropy of the samples' nearest-mode histogram over the prompt's 4 modes, divided by log 4),
off-support fraction (samples not within 3 std of any mode of their prompt), seconds per sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MixturePipeline", "modes", "run_mixture", "train_denoiser"]

N_MODES = 8
N_GROUPS = 2
RADIUS = 2.0
STD = 0.15
WEIGHTS = (0.55, 0.25, 0.12, 0.08)
T_TRAIN = 1000
# the experiment's own sweep (2-D points, not images): each method's plot shows its best scale
SCALES: dict[str, list[float]] = {
    "sparke": [0.03, 0.1, 0.3],
    "rke": [0.03, 0.1, 0.3],
    "vendi": [0.03, 0.1, 0.3],
    "cads": [0.25, 1.0],
    "pg": [0.01, 0.03, 0.1],
}


def modes() -> np.ndarray:
    """(12, 2) mode centres on the circle."""
    a = 2 * np.pi * np.arange(N_MODES) / N_MODES
    return RADIUS * np.stack([np.cos(a), np.sin(a)], 1)


def group_modes(k: int) -> list[int]:
    """Mode indices selected by prompt ``group k``, heaviest first."""
    return [k + N_GROUPS * j for j in range(N_MODES // N_GROUPS)]


def sample_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 2), group (n,)) from the mixture, groups uniform."""
    g = rng.integers(N_GROUPS, size=n)
    j = rng.choice(len(WEIGHTS), size=n, p=np.asarray(WEIGHTS))
    centres = modes()[[group_modes(k)[i] for k, i in zip(g, j, strict=True)]]
    return centres + STD * rng.standard_normal((n, 2)), g


class Denoiser(nn.Module):
    """eps(x_t, t, c): an MLP on (x, sinusoidal t, condition); condition (B, 1, 3) one-hot or zeros (null)."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + 32 + N_GROUPS, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 2),
        )

    def forward(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1)
        t = t.expand(sample.shape[0]) / T_TRAIN
        freqs = torch.exp(torch.linspace(0, math.log(1000.0), 16, device=sample.device))
        temb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        c = encoder_hidden_states.reshape(sample.shape[0], -1).to(sample.dtype)
        return self.net(torch.cat([sample, temb, c], 1))


def _alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T_TRAIN, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


WEIGHTS_FILE = Path(__file__).with_name("mixture.safetensors")


def train_denoiser(steps: int = 4000, batch: int = 1024, seed: int = 0, device: str = "cpu") -> Denoiser:
    """Train the MLP on fresh mixture samples; returned on the CPU in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Denoiser().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    abar = _alphas_cumprod()
    for _ in range(steps):
        x, g = sample_data(batch, rng)
        x0 = torch.from_numpy(x).float().to(device)
        c = nn.functional.one_hot(torch.from_numpy(g), N_GROUPS).float().to(device)
        c = c * (
            torch.rand(batch, 1, device=device) > 0.1
        )  # 10% null condition, for classifier-free guidance
        t = torch.randint(0, T_TRAIN, (batch,), device=device)
        eps = torch.randn_like(x0)
        a = abar.to(device)[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (model(xt, t, c[:, None]) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.cpu().eval().requires_grad_(False)
    return model


def load_denoiser(path: str | Path | None = None) -> Denoiser:
    """The shipped denoiser (``mixture.safetensors``), or the one at ``path``."""
    from safetensors.torch import load_file

    model = Denoiser()
    model.load_state_dict(load_file(str(path or WEIGHTS_FILE)))
    return model.eval().requires_grad_(False)


@dataclass
class MixtureOutput:
    images: torch.Tensor  # (B, 2) points (named like diffusers' outputs)


class MixturePipeline:
    """A minimal diffusers-style text-to-point pipeline: prompts ``"group k"``, latents (B, 2)."""

    vae = None

    def __init__(self, unet: Denoiser) -> None:
        from diffusers import DPMSolverMultistepScheduler

        self.unet = unet
        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=T_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
        )
        self._execution_device = torch.device("cpu")

    def encode_prompt_features(self, prompts: list[str]) -> torch.Tensor:
        """One-hot (N, 3) of prompts ``"group k"``."""
        ids = torch.tensor([int(p.split()[-1]) for p in prompts])
        return nn.functional.one_hot(ids, N_GROUPS).float()

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
    ) -> MixtureOutput:
        c = self.encode_prompt_features(list(prompt)).repeat_interleave(num_images_per_prompt, 0)
        b = c.shape[0]
        self.scheduler.set_timesteps(num_inference_steps)
        z = torch.randn((b, 2), generator=generator) * self.scheduler.init_noise_sigma
        cond = torch.cat([torch.zeros_like(c), c])[:, None]  # [null, prompt], as diffusers orders CFG
        for t in self.scheduler.timesteps:
            eps_u, eps_c = self.unet(torch.cat([z, z]), t, encoder_hidden_states=cond).chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            z = self.scheduler.step(eps, t, z, return_dict=False)[0]
        return MixtureOutput(images=z)


def _scores(points: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    centres = modes()
    cov, ent, off = [], [], []
    for k in range(N_GROUPS):
        p = points[groups == k]
        own = centres[group_modes(k)]
        d = np.linalg.norm(p[:, None] - own[None], axis=2)  # (n, 4)
        near = d.min(1) <= 3 * STD
        off.append(~near)
        hit = np.zeros(len(own), bool)
        hit[d.argmin(1)[near]] = True
        cov.append(hit.mean())
        counts = np.bincount(d.argmin(1)[near], minlength=len(own)).astype(float)
        q = counts / max(counts.sum(), 1)
        q = q[q > 0]
        ent.append(float(-(q * np.log(q)).sum() / np.log(len(own))))
    return {
        "mode_coverage": float(np.mean(cov)),
        "mode_entropy": float(np.mean(ent)),
        "off_support": float(np.concatenate(off).mean()),
    }


def run_mixture(
    settings: list[tuple[str, float, dict[str, Any]]],
    out: Path | None = None,
    rounds: int = 8,
    per_prompt: int = 4,
    steps: int = 20,
    cfg: float = 3.0,
    seed: int = 0,
    model: Denoiser | None = None,
) -> list[dict[str, Any]]:
    """Sample every (method, scale, options) setting with the 2-D model, score it; scatter plot to out.

    ``model``: default the shipped one (trained afresh when the file is missing).
    """
    from sparke.methods import make

    if model is None:
        model = load_denoiser() if WEIGHTS_FILE.exists() else train_denoiser(seed=seed)
    pipe = MixturePipeline(model)
    prompts = [f"group {k}" for k in range(N_GROUPS)]
    rows, clouds = [], []
    for method, scale, options in settings:
        guide = make(method, scale=scale, **options)
        g = torch.Generator().manual_seed(seed)
        pts, grp = [], []
        start = time.perf_counter()
        for _ in range(rounds):
            res = guide(
                pipe,
                prompt=prompts,
                num_images_per_prompt=per_prompt,
                num_inference_steps=steps,
                guidance_scale=cfg,
                generator=g,
            )
            pts.append(res.images.numpy())
            grp.append(np.repeat(np.arange(N_GROUPS), per_prompt))
        seconds = time.perf_counter() - start
        points, groups = np.concatenate(pts), np.concatenate(grp)
        row = {
            "method": method,
            "scale": scale,
            **_scores(points, groups),
            "sec_per_sample": seconds / len(points),
        }
        rows.append(row)
        clouds.append((method, scale, points, groups))
    if out is not None:
        _plot(out / "mixture.png", [clouds[i] for i in _best(rows)])
    for i in _best(rows):
        rows[i]["plotted"] = True
    return rows


def _best(rows: list[dict[str, Any]]) -> list[int]:
    """Per method, the row with the highest mode entropy whose off-support fraction is within 2 points of
    none's (else its smallest scale): the one the scatter plot shows."""
    floor = next(r["off_support"] for r in rows if r["method"] == "none") + 0.02 + 1e-9
    chosen: dict[str, int] = {}
    for i, r in enumerate(rows):
        j = chosen.get(r["method"])
        ok = r["off_support"] <= floor
        if j is None:
            chosen[r["method"]] = i
            continue
        cur = rows[j]
        cur_ok = cur["off_support"] <= floor
        if (ok and not cur_ok) or (ok and cur_ok and r["mode_entropy"] > cur["mode_entropy"]):
            chosen[r["method"]] = i
    return sorted(chosen.values())


def _plot(path: Path, clouds: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clouds)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=110, squeeze=False)
    centres = modes()
    colours = ("tab:red", "tab:blue", "tab:green")
    for ax, (method, scale, pts, grp) in zip(axes.flat, clouds, strict=False):
        for k in range(N_GROUPS):
            own = centres[group_modes(k)]
            ax.scatter(
                own[:, 0],
                own[:, 1],
                s=[160 * w / max(WEIGHTS) for w in WEIGHTS],
                facecolors="none",
                edgecolors=colours[k],
                linewidths=1,
            )
            p = pts[grp == k]
            ax.scatter(p[:, 0], p[:, 1], s=6, color=colours[k])
        ax.set_title(f"{method} {scale:g}" if method != "none" else "none", fontsize=9)
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
