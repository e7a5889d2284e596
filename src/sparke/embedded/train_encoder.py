"""Train the evaluation encoder (``python -m sparke.embedded.train_encoder --out DIR``).

Scenes are drawn from the world's distribution and rendered on the fly; light Gaussian
pixel noise (sigma 0-0.05 in [-1, 1] units) makes the features robust to the small
imperfections of generated images. Loss: cross-entropy on each attribute head plus MSE on
(cx, cy, r) / 32. AdamW lr 2e-3 with cosine decay, batch 256. Output: fp16
``encoder.safetensors`` and ``encoder_info.json`` (held-out head accuracies).
A GPU trains the default 3000 steps in about a minute; 2 CPU cores take several minutes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sparke.embedded import world as W
from sparke.embedded.data import SceneBatch, render_batch
from sparke.embedded.encoder import ShapesEncoder
from sparke.embedded.training import save_trained, training_parser


def random_scenes(rng: np.random.Generator, n: int) -> SceneBatch:
    """``n`` scenes from :func:`world.sample_scene` as a :class:`SceneBatch`."""
    scenes = [W.sample_scene(rng) for _ in range(n)]
    objs = np.zeros((n, 2, 3))
    objs[:, 1] = (-100.0, -100.0, 1.0)
    for i, s in enumerate(scenes):
        for j, o in enumerate(s.objects):
            objs[i, j] = (o.cx, o.cy, o.r)
    return SceneBatch(
        np.asarray([W.SHAPES.index(s.shape) for s in scenes]),
        np.asarray([W.COLOURS.index(s.colour) for s in scenes]),
        np.asarray([W.SIZE_NAMES.index(s.size) for s in scenes]),
        np.asarray([W.BACKGROUND_NAMES.index(s.background) for s in scenes]),
        np.asarray([s.count for s in scenes]),
        objs,
    )


def targets(b: SceneBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """Head targets for a batch (class ids, and (cx, cy, r) / 32 of the first object)."""
    cx, cy = b.objs[:, 0, 0], b.objs[:, 0, 1]
    t = {
        "shape": b.shape,
        "colour": b.colour,
        "size": b.size,
        "background": b.background,
        "count": b.count - 1,
        "row": np.minimum((cy * 3 / W.IMAGE_SIZE).astype(int), 2),
        "col": np.minimum((cx * 3 / W.IMAGE_SIZE).astype(int), 2),
    }
    out = {k: torch.as_tensor(v, device=device, dtype=torch.long) for k, v in t.items()}
    out["geom"] = torch.as_tensor(b.objs[:, 0] / W.IMAGE_SIZE, device=device, dtype=torch.float32)
    return out


def loss_fn(pred: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = 10.0 * torch.nn.functional.mse_loss(pred["geom"], tgt["geom"])
    for k in tgt:
        if k != "geom":
            loss = loss + torch.nn.functional.cross_entropy(pred[k], tgt[k])
    return loss


def train_encoder(
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 2e-3,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Train, write ``encoder.safetensors`` + ``encoder_info.json`` to ``out``; returns the info dict."""
    t0 = time.time()
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ShapesEncoder().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / steps, 1.0)))
    )
    for step in range(steps):
        b = random_scenes(rng, batch_size)
        x = render_batch(b, dev)
        x = x + torch.rand(batch_size, 1, 1, 1, device=dev) * 0.05 * torch.randn_like(x)
        loss = loss_fn(model.predict(x), targets(b, dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            print(f"step {step + 1} loss {float(loss):.4f} {time.time() - t0:.0f}s", flush=True)

    model.eval()
    test_rng = np.random.default_rng(seed + 10_000)
    b = random_scenes(test_rng, 1000)
    with torch.no_grad():
        pred = model.predict(render_batch(b, dev))
    tgt = targets(b, dev)
    acc = {k: float((pred[k].argmax(1) == tgt[k]).float().mean()) for k in tgt if k != "geom"}
    acc["geom_rmse_px"] = float(((pred["geom"] - tgt["geom"]) ** 2).mean().sqrt() * W.IMAGE_SIZE)
    info = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "heldout": acc,
    }
    save_trained(model, out, "encoder.safetensors", "encoder_info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = training_parser(__doc__.split("\n")[0], out="runs/embedded/encoder", steps=3000, batch_size=256)
    a = ap.parse_args(argv)
    print(json.dumps(train_encoder(a.out, a.steps, a.batch_size, device=a.device, seed=a.seed)))


if __name__ == "__main__":
    main()
