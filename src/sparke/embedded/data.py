"""Training data for the embedded models: a caption pool with cached MiniLM embeddings, and a
vectorised (torch) sampler + renderer of scenes consistent with each caption.

Each pool entry is a caption and the attributes it states (shape, colour, count always;
size, background, position when mentioned, else -1 = free). A training example picks a
caption, draws a scene that agrees with it (free attributes uniformly at random, as
:func:`sparke.embedded.world.sample_scene` does) and renders it on the fly, on any device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparke.embedded import world as W

POS_NAMES: tuple[str, ...] = tuple(W.cell_name(r, c) for r in range(3) for c in range(3))


@dataclass
class CaptionPool:
    """Captions (index 0 is the empty prompt) with their stated attributes as int arrays (-1 = free)."""

    captions: list[str]
    shape: np.ndarray
    colour: np.ndarray
    count: np.ndarray
    size: np.ndarray
    background: np.ndarray
    position: np.ndarray
    freq: np.ndarray  # how often each caption was drawn: sample in proportion to keep the world's mix
    embeds: torch.Tensor | None = None  # (K, 384) float16

    def __len__(self) -> int:
        return len(self.captions)

    def save(self, path: str | Path) -> None:
        """Safetensors file: embeddings + attribute arrays; captions in the metadata (JSON)."""
        from safetensors.torch import save_file

        assert self.embeds is not None
        tensors = {"embeds": self.embeds.to(torch.float16).contiguous()}
        for k in ("shape", "colour", "count", "size", "background", "position", "freq"):
            tensors[k] = torch.from_numpy(getattr(self, k).astype(np.int64))
        save_file(tensors, str(path), metadata={"captions": json.dumps(self.captions)})

    @classmethod
    def load(cls, path: str | Path) -> CaptionPool:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            caps = json.loads(f.metadata()["captions"])
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        arr = {
            k: t[k].numpy() for k in ("shape", "colour", "count", "size", "background", "position", "freq")
        }
        return cls(caps, **arr, embeds=t["embeds"])


def build_caption_pool(n_draws: int = 40000, seed: int = 0) -> CaptionPool:
    """Draw ``n_draws`` (scene, caption) pairs from the world's distribution; keep unique captions."""
    rng = np.random.default_rng(seed)
    caps = [""]
    rows = [(-1, -1, 1, -1, -1, -1)]
    seen = {"": 0}
    freq = [0]
    for _ in range(n_draws):
        scene = W.sample_scene(rng)
        want_size = rng.random() < 0.35
        want_bg = rng.random() < 0.35
        want_pos = scene.count == 1 and rng.random() < 0.25
        text = W.describe(
            rng,
            scene.shape,
            scene.colour,
            scene.count,
            size=scene.size if want_size else None,
            background=scene.background if want_bg else None,
            position=scene.position if want_pos else None,
        )
        if text in seen:
            freq[seen[text]] += 1
            continue
        seen[text] = len(caps)
        freq.append(1)
        caps.append(text)
        rows.append(
            (
                W.SHAPES.index(scene.shape),
                W.COLOURS.index(scene.colour),
                scene.count,
                W.SIZE_NAMES.index(scene.size) if want_size else -1,
                W.BACKGROUND_NAMES.index(scene.background) if want_bg else -1,
                POS_NAMES.index(scene.position) if want_pos else -1,
            )
        )
    a = np.asarray(rows, dtype=np.int64)
    return CaptionPool(caps, a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], np.asarray(freq))


def embed_pool(pool: CaptionPool, device: str | torch.device = "cpu") -> CaptionPool:
    """Fill ``pool.embeds`` with MiniLM embeddings (float16, on cpu)."""
    from sparke.encoders.minilm import encode_minilm

    pool.embeds = encode_minilm(pool.captions, device=device).to("cpu", torch.float16)
    return pool


# ----------------------------------------------------------------------------- batch scenes


@dataclass
class SceneBatch:
    """B scenes as arrays: ids index world.SHAPES/COLOURS/SIZE_NAMES/BACKGROUND_NAMES; objs (B, 2, 3) = cx, cy, r."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    count: np.ndarray
    objs: np.ndarray

    def scene(self, i: int) -> W.Scene:
        """The i-th scene as a :class:`world.Scene`."""
        objs = tuple(W.Obj(*map(float, self.objs[i, j])) for j in range(int(self.count[i])))
        return W.Scene(
            W.SHAPES[self.shape[i]],
            W.COLOURS[self.colour[i]],
            W.SIZE_NAMES[self.size[i]],
            W.BACKGROUND_NAMES[self.background[i]],
            objs,
        )


def sample_scenes(
    rng: np.random.Generator,
    shape: np.ndarray,
    colour: np.ndarray,
    count: np.ndarray,
    size: np.ndarray,
    background: np.ndarray,
    position: np.ndarray,
) -> SceneBatch:
    """Vectorised scene sampling given stated attributes (arrays of length B, -1 = draw at random)."""
    b = len(shape)
    count = count.copy()
    size = size.copy()
    bg = np.where(background >= 0, background, rng.integers(len(W.BACKGROUND_NAMES), size=b))
    free = size < 0
    # two objects never come large
    size[free] = np.where(
        count[free] == 2, rng.integers(2, size=free.sum()), rng.integers(3, size=free.sum())
    )
    lo_hi = np.asarray([W.SIZES[n] for n in W.SIZE_NAMES])
    r = rng.uniform(lo_hi[size, 0], lo_hi[size, 1])
    lo, hi = r + 0.5, W.IMAGE_SIZE - r - 0.5
    third = W.IMAGE_SIZE / 3
    # first object: uniform in the valid range, restricted to the stated cell if any
    row, col = position // 3, position % 3
    has_pos = position >= 0
    x_lo = np.where(has_pos, np.maximum(lo, col * third), lo)
    x_hi = np.where(has_pos, np.minimum(hi, (col + 1) * third - 1e-6), hi)
    y_lo = np.where(has_pos, np.maximum(lo, row * third), lo)
    y_hi = np.where(has_pos, np.minimum(hi, (row + 1) * third - 1e-6), hi)
    cx1, cy1 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    # second object: same size class, own radius, rejection-sampled for a 2-pixel gap
    r2 = rng.uniform(lo_hi[size, 0], lo_hi[size, 1])
    lo2, hi2 = r2 + 0.5, W.IMAGE_SIZE - r2 - 0.5
    cx2, cy2 = np.full(b, -100.0), np.full(b, -100.0)
    todo = count == 2
    for _ in range(64):
        if not todo.any():
            break
        x, y = rng.uniform(lo2, hi2), rng.uniform(lo2, hi2)
        ok = todo & (np.maximum(np.abs(x - cx1) - r - r2, np.abs(y - cy1) - r - r2) >= 2.0)
        cx2[ok], cy2[ok] = x[ok], y[ok]
        todo &= ~ok
    count[todo] = 1  # could not place (never seen in practice): fall back to one object
    objs = np.zeros((b, 2, 3))
    objs[:, 0] = np.stack([cx1, cy1, r], 1)
    objs[:, 1] = np.stack([cx2, cy2, r2], 1)
    return SceneBatch(shape.copy(), colour.copy(), size, bg, count, objs)


_PALETTE = torch.tensor([W.PALETTE[c] for c in W.COLOURS], dtype=torch.float32)
_BG = torch.tensor([W.BACKGROUNDS[c] for c in W.BACKGROUND_NAMES], dtype=torch.float32)


def render_batch(batch: SceneBatch, device: str | torch.device = "cpu") -> torch.Tensor:
    """Render B scenes to (B, 3, 32, 32) float32 in [-1, 1] on ``device`` (same pixels as world.render)."""
    s, ss = W.IMAGE_SIZE, W.SUPERSAMPLE
    dev = torch.device(device)
    t = (torch.arange(s * ss, device=dev, dtype=torch.float64) + 0.5) / ss
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    shape = torch.as_tensor(batch.shape, device=dev)[:, None, None]
    objs = torch.as_tensor(batch.objs, device=dev, dtype=torch.float64)
    count = torch.as_tensor(batch.count, device=dev)
    img = _BG.to(dev)[torch.as_tensor(batch.background, device=dev)][:, :, None, None].expand(-1, -1, s, s)
    fg = _PALETTE.to(dev)[torch.as_tensor(batch.colour, device=dev)][:, :, None, None]
    for j in range(2):
        cx, cy, r = (objs[:, j, k][:, None, None] for k in range(3))
        dx, dy = gx - cx, gy - cy
        circle = dx * dx + dy * dy <= r * r
        square = (dx.abs() <= r) & (dy.abs() <= r)
        tri = (dy <= r) & (dx.abs() <= (dy + r) / 2)
        m = torch.where(shape == 0, circle, torch.where(shape == 1, square, tri)).float()
        a = torch.nn.functional.avg_pool2d(m[:, None], ss)  # (B, 1, s, s) coverage
        a = a * (count > j).float()[:, None, None, None]
        img = img * (1 - a) + fg * a
    img = img.clamp(0, 255).round()
    return img / 127.5 - 1


def load_or_build_pool(path: str | Path | None, n_draws: int, seed: int, device: str = "cpu") -> CaptionPool:
    """Load the cached pool at ``path`` or build + embed it (and save it there)."""
    if path is not None and Path(path).exists():
        return CaptionPool.load(path)
    pool = embed_pool(build_caption_pool(n_draws, seed), device=device)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pool.save(path)
    return pool
