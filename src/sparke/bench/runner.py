"""Run the benchmark: generate every (method, scale) setting on the embedded model and measure it.

Every setting generates the same prompt set from the same initial noise: ``seeds`` rounds, in each round one
pipeline call per cluster with its ``prompts`` paraphrases (a batch of 8 in the quick run). Rounds go over
all clusters before the next round starts, the way a user builds a data set, so a bank method has seen
earlier images of the same cluster (and of the others) from the second round on. Particle guidance sees only
the batch (one cluster's paraphrases).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sparke.methods import make

from .config import BenchConfig, guide_options
from .metrics import Evidence, feature_scores, free_attribute_scores, matching_cond_vendi, world_scores

__all__ = [
    "Generated",
    "PeakMemory",
    "Setting",
    "generate_setting",
    "measure",
    "measure_with_evidence",
    "reference_images",
    "setting_row",
    "world_row",
]


@dataclass
class Setting:
    """One row of the benchmark: a method at a scale, with options beyond its defaults."""

    label: str  # the method name, or a variant's label
    method: str
    scale: float
    options: dict[str, Any]


@dataclass
class Generated:
    """The images of one setting and what they cost."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    cluster: np.ndarray  # (N,) cluster index of each image
    prompts: list[str]  # (N,) prompt of each image
    seconds: float  # wall time of the pipeline calls
    peak_mem_mb: float  # peak memory above the level before the run (CPU: RSS; CUDA: allocated)
    round: np.ndarray | None = None  # (N,) seed round of each image (None: one round)


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or the process RSS sampled every 5 ms on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._max = self._base

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._max = max(self._max, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._max = max(self._max, self._rss())
        self.peak_mb = (self._max - self._base) / 2**20


def _noise_seed(seed: int, round_: int, cluster: int, i: int) -> int:
    return ((seed * 1009 + round_) * 1009 + cluster) * 1009 + i


def generate_setting(
    pipe: Any,
    clusters: list,
    setting: Setting,
    config: BenchConfig,
    progress: Callable[[str], None] | None = None,
) -> Generated:
    """Generate the whole prompt set with one setting (a fresh guide, so a fresh bank)."""
    options = {**guide_options(setting.method, config), **setting.options}
    guide = make(setting.method, scale=setting.scale, **options)
    images, cluster_ids, prompts, rounds = [], [], [], []
    seconds = 0.0
    with PeakMemory(config.device) as mem:
        for r in range(config.seeds):
            for c, cl in enumerate(clusters):
                gens = [
                    torch.Generator("cpu").manual_seed(_noise_seed(config.seed, r, c, i))
                    for i in range(len(cl.prompts))
                ]
                start = time.perf_counter()
                out = guide(
                    pipe,
                    prompt=list(cl.prompts),
                    num_inference_steps=config.steps,
                    guidance_scale=config.cfg,
                    generator=gens,
                    output_type="pt",
                )
                if config.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - start
                arr = (out.images.permute(0, 2, 3, 1).cpu().float().numpy() * 255).round().astype(np.uint8)
                images.append(arr)
                cluster_ids += [c] * len(arr)
                rounds += [r] * len(arr)
                prompts += list(cl.prompts)
            if progress is not None:
                progress(f"{setting.label} scale={setting.scale:g}: round {r + 1}/{config.seeds}")
    return Generated(
        np.concatenate(images), np.asarray(cluster_ids), prompts, seconds, mem.peak_mb, np.asarray(rounds)
    )


def reference_images(clusters: list, config: BenchConfig) -> Generated:
    """Renders of the world's own distribution for the same prompt set: the diversity a perfect model reaches."""
    from sparke.embedded import world as W

    rng = np.random.default_rng(config.seed + 12345)
    images, cluster_ids, prompts, rounds = [], [], [], []
    for r in range(config.seeds):
        for c, cl in enumerate(clusters):
            for p in cl.prompts:
                scene = W.sample_scene(rng, cl.shape, cl.colour, background=cl.background, count=cl.count)
                images.append(W.render(scene))
                cluster_ids.append(c)
                rounds.append(r)
                prompts.append(p)
    return Generated(np.stack(images), np.asarray(cluster_ids), prompts, 0.0, 0.0, np.asarray(rounds))


def measure(
    gen: Generated, clusters: list, encoder: torch.nn.Module, prompt_features: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Fidelity, free-attribute coverage/entropy and the feature-space scores of one setting's images."""
    return measure_with_evidence(gen, clusters, encoder, prompt_features)[0]


@torch.no_grad()
def measure_with_evidence(
    gen: Generated, clusters: list, encoder: torch.nn.Module, prompt_features: dict[str, torch.Tensor]
) -> tuple[dict[str, float], Evidence]:
    """``measure``'s row and the per-image evidence its bootstrap intervals need."""
    from sparke.embedded.checker import check, matches

    detections = [check(im) for im in gen.images]
    ok = [matches(d, clusters[c]) for d, c in zip(detections, gen.cluster, strict=True)]
    cov, ent = [], []
    for c, cl in enumerate(clusters):
        idx = np.flatnonzero(gen.cluster == c)
        a, b = free_attribute_scores([detections[i] for i in idx], [ok[i] for i in idx], cl)
        cov.append(a)
        ent.append(b)
    device = next(encoder.parameters()).device
    pixels = torch.from_numpy(gen.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    feats = torch.cat([encoder(chunk.to(device)).cpu() for chunk in pixels.split(256)])
    y = torch.stack([prompt_features[p] for p in gen.prompts])
    n = len(gen.images)
    evidence = Evidence(
        ok=np.asarray(ok, bool),
        cluster=np.asarray(gen.cluster),
        round=np.zeros(n, np.int64) if gen.round is None else np.asarray(gen.round),
        feats=feats,
        prompt_feats=y,
        coverage=np.asarray(cov, float),
        entropy=np.asarray(ent, float),
    )
    row = {
        "fidelity": float(np.mean(ok)),
        "free_attribute_coverage": float(np.mean(cov)),
        "free_attribute_entropy": float(np.mean(ent)),
        **feature_scores(feats, y, gen.cluster),
        "cond_vendi_matching": matching_cond_vendi(feats, y, ok),
        "sec_per_image": gen.seconds / n if gen.seconds else 0.0,
        "peak_mem_mb": gen.peak_mem_mb,
        "n_images": n,
    }
    return row, evidence


def world_row(
    world: Generated, clusters: list, encoder: torch.nn.Module, prompt_features: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], Evidence]:
    """The ``world`` row of ``reference_images`` (what a perfect model scores) and its evidence, which every
    setting's world recall and coverage are measured against."""
    measured, evidence = measure_with_evidence(world, clusters, encoder, prompt_features)
    row = {"label": "world", "method": "world", "scale": 0.0, **measured}
    return {**row, "sec_per_image": None, "peak_mem_mb": None}, evidence


def setting_row(
    setting: Setting,
    gen: Generated,
    clusters: list,
    encoder: torch.nn.Module,
    prompt_features: dict[str, torch.Tensor],
    world_evidence: Evidence,
) -> tuple[dict[str, Any], Evidence]:
    """One setting's row of results.json (its options, measures and scores against the world) and its
    evidence."""
    row: dict[str, Any] = {"label": setting.label, "method": setting.method, "scale": setting.scale}
    if setting.options:
        row["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in setting.options.items()}
    measured, evidence = measure_with_evidence(gen, clusters, encoder, prompt_features)
    row.update(measured)
    row.update(world_scores(evidence, world_evidence))
    return row, evidence
