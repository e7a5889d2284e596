"""``sparke bench``: the ground-truth benchmark of SPARKE against the paper's baselines on the embedded model.

    from sparke.bench import QUICK, run_bench
    meta = run_bench(QUICK, "bench-out")    # writes results.json, results.md, meta.json, plots
    rows = run_bench_sets(QUICK, [5, 6, 7], "bench-sets")   # one folder per prompt set, and pooled.md

See ``docs/benchmark.md`` for what is measured and how.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import FULL, QUICK, BenchConfig
from .runner import Setting

__all__ = ["FULL", "QUICK", "BenchConfig", "Setting", "run_bench", "run_bench_sets", "settings_of"]


def settings_of(config: BenchConfig) -> list[Setting]:
    """The settings to run: ``none`` first, then every method's scales, then the variants."""
    out = [Setting("none", "none", 0.0, {})]
    for method, scales in config.sweeps.items():
        out += [Setting(method, method, float(s), {}) for s in scales]
    for label, v in config.variants.items():
        for s in v.get("scales", [v.get("scale")]):
            out.append(Setting(label, v["method"], float(s), dict(v.get("options", {}))))
    return out


def run_bench(
    config: BenchConfig,
    out: str | Path,
    command: str = "",
    progress: Callable[[str], None] | None = print,
    pipe: Any = None,
    encoder: Any = None,
) -> dict[str, Any]:
    """Run every setting, write DIR/results.json (rows), results.md, meta.json and the plots; return meta."""
    import torch

    from sparke.embedded import world as W
    from sparke.encoders.minilm import encode_minilm

    from . import report
    from .runner import generate_setting, reference_images, setting_row, world_row

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    pipe, encoder = _models(config, pipe, encoder)
    clusters = W.prompt_clusters(config.clusters, config.prompts, seed=config.seed)
    texts = sorted({p for cl in clusters for p in cl.prompts})
    prompt_features = dict(zip(texts, encode_minilm(texts).cpu(), strict=True))

    intervals = Intervals(config)
    world = reference_images(clusters, config)
    first, world_evidence = world_row(world, clusters, encoder, prompt_features)
    rows: list[dict[str, Any]] = [first]
    reps: list[dict[str, Any] | None] = [intervals.add(first, world_evidence)]  # bootstrap replicates, paired
    samples: dict[str, Any] = {"world": world}
    for setting in settings_of(config):
        torch.manual_seed(config.seed)
        gen = generate_setting(pipe, clusters, setting, config, progress=say)
        row, evidence = setting_row(setting, gen, clusters, encoder, prompt_features, world_evidence)
        rows.append(row)
        reps.append(intervals.add(row, evidence))
        samples[f"{setting.label} {setting.scale:g}"] = gen
        say(progress_line(row, rows, time.perf_counter() - start))
        # after each setting: a run stopped midway leaves its finished rows, paired and combinable
        write_state(out, config, command, start, rows, reps, intervals, complete=False)

    mixture_rows = _mixture(config, out, say)
    meta = write_state(out, config, command, start, rows, reps, intervals, complete=True)
    report.plot_tradeoff(out, rows)
    report.plot_samples(out, samples, clusters)
    report.write_markdown(out, rows, meta, mixture_rows)
    return meta


def progress_line(row: dict[str, Any], rows: list[dict[str, Any]], elapsed: float) -> str:
    """One setting's console line: the ground truth first, then Cond-Vendi beside the world's."""
    from .report import gap_closed

    def number(value: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if value is None else fmt.format(value)

    world = rows[0]  # run_bench measures the world first
    key = "cond_vendi_matching"
    return (
        f"{row['label']} {row['scale']:g}: fidelity {row['fidelity']:.3f}, gap closed "
        f"{number(gap_closed(row, rows), '{:.0%}')}, coverage {row['free_attribute_coverage']:.3f}; "
        f"Cond-Vendi {row['cond_vendi']:.2f} (world {world['cond_vendi']:.2f}), among matching "
        f"{number(row.get(key))} (world {number(world.get(key))}); "
        f"{row['sec_per_image']:.2f} s/image ({elapsed:.0f} s elapsed)"
    )


def run_bench_sets(
    config: BenchConfig,
    seeds: list[int],
    out: str | Path,
    command: str = "",
    progress: Callable[[str], None] | None = print,
    pipe: Any = None,
    encoder: Any = None,
) -> list[dict[str, Any]]:
    """``run_bench`` on each prompt set ``config`` with seed S, into OUT/seedS, then pooled over the sets into
    OUT/pooled.json and OUT/pooled.md (``sparke.bench.pool``); returns the pooled rows.

    One prompt set resolves a fidelity difference to about +-4 points; k sets narrow that by sqrt(k). A set
    whose folder already holds a complete run of the same config is not run again, so a stopped run resumes
    at its first unfinished set.
    """
    import dataclasses
    import json

    from .pool import pool_folders

    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError(f"seeds: give at least two different prompt-set seeds, got {list(seeds)}")
    out = Path(out)
    say = progress or (lambda _msg: None)
    folders = []
    for i, seed in enumerate(seeds):
        one = dataclasses.replace(config, seed=seed)
        folder = out / f"seed{seed}"
        folders.append(folder)
        meta_file = folder / "meta.json"
        if meta_file.is_file():
            done = json.loads(meta_file.read_text())
            same = json.loads(json.dumps(one.to_dict(), default=float))  # as meta.json holds it
            if done.get("complete") and done.get("config") == same:
                say(f"prompt set {seed}: complete in {folder}, kept")
                continue
        say(f"prompt set {seed} ({i + 1} of {len(seeds)})")
        pipe, encoder = _models(config, pipe, encoder)
        run_bench(one, folder, command=command, progress=progress, pipe=pipe, encoder=encoder)
    return pool_folders(out, folders)


def _models(config: BenchConfig, pipe: Any, encoder: Any) -> tuple[Any, Any]:
    """The pipeline and the evaluation encoder: those given, else the embedded ones on ``config.device``."""
    if pipe is None:
        from sparke.embedded.pipeline import load_pipeline

        pipe = load_pipeline(config.device, weights_dir=config.weights)
    if encoder is None:
        from sparke.embedded.encoder import load_encoder

        encoder = load_encoder(config.device)
    return pipe, encoder


def _mixture(config: BenchConfig, out: Path, say: Callable[[str], None]) -> list[dict[str, Any]] | None:
    """The 2-D Gaussian mixture experiment's rows (also written to DIR/mixture.json), or None when it is off."""
    if not config.mixture:
        return None
    from . import report
    from .mixture import SCALES as MIX_SCALES
    from .mixture import run_mixture

    say("2-D Gaussian mixture experiment")
    mix_settings = [("none", 0.0, {})] + [
        # the paper's latent space for every bank method (the 2-D points have no spatial axis to centre)
        (m, s, {"every": 4, "space": "latent"} if m in ("sparke", "rke", "vendi") else {})
        for m, scales in MIX_SCALES.items()
        for s in scales
    ]
    mixture_rows = run_mixture(mix_settings, out=out, seed=config.seed)
    report.write_json(out / "mixture.json", mixture_rows)
    return mixture_rows


def write_state(
    out: Path,
    config: BenchConfig,
    command: str,
    start: float,
    rows: list[dict[str, Any]],
    reps: list[Any],
    intervals: Intervals,
    complete: bool,
) -> dict[str, Any]:
    """DIR/results.json, DIR/meta.json (``complete`` False while settings remain) and DIR/replicates.npz."""
    import torch

    from . import report

    meta = {
        "command": command or "sparke.bench.run_bench(...)",
        "config": config.to_dict(),
        "complete": complete,
        "wall_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "goal": report.goal_check(rows, reps),
        "goal_at_default": report.goal_check(rows, reps, fixed=report.RECOMMENDED),
        "intervals": intervals.describe(),
        "best": {k: (None if v is None else v["scale"]) for k, v in report.best_rows(rows).items()},
    }
    report.write_json(out / "results.json", rows)
    report.write_json(out / "meta.json", meta)
    intervals.save(out / "replicates.npz", rows, reps)
    return meta


class Intervals:
    """Paired bootstrap intervals of the rows of one run: the same cluster resamples for every setting."""

    def __init__(self, config: BenchConfig) -> None:
        from sparke.metrics.bootstrap import draw_units

        self.n_boot = config.n_boot
        self.seed = config.seed
        self.draws = (
            draw_units(config.clusters, config.seeds, config.n_boot, seed=config.seed)
            if config.n_boot
            else None
        )
        self.prompt_entropy: Any = None
        self.none: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.pending: list[tuple[dict[str, Any], dict[str, Any]]] = []  # rows before `none` (the world's)

    def add(self, row: dict[str, Any], evidence: Any) -> dict[str, Any] | None:
        """Add ``ci`` and ``delta_vs_none`` to ``row`` (in place); return its replicates."""
        if self.draws is None:
            return None
        from sparke.metrics.bootstrap import (
            delta,
            gaussian_kernel,
            metric_interval,
            spectral_entropy_replicates,
        )

        from .metrics import CI_METRICS, SIGMA_PROMPT, replicates

        if self.prompt_entropy is None:  # the same prompts, in the same order, for every setting
            item = self.draws.per_item(evidence.cluster, evidence.round)
            self.prompt_entropy = spectral_entropy_replicates(
                gaussian_kernel(evidence.prompt_feats, SIGMA_PROMPT), item
            )
        r = replicates(evidence, self.draws, self.prompt_entropy)
        n_items = {"cond_vendi_matching": int(evidence.ok.sum())}  # its range: [1, n matching images]
        row["ci"] = {
            m: metric_interval(m, row[m], r[m], n_items.get(m, int(evidence.feats.shape[0])))
            for m in CI_METRICS
            if m in r and row.get(m) is not None
        }
        self.pending.append((row, r))
        if row["method"] == "none" and self.none is None:
            self.none = (row, r)
        if self.none is not None:
            base, base_r = self.none
            for pending_row, pending_r in self.pending:
                pending_row["delta_vs_none"] = {
                    m: delta(pending_row[m], pending_r[m], base[m], base_r[m])
                    for m in CI_METRICS
                    if m in pending_r and m in base_r and None not in (pending_row.get(m), base.get(m))
                }
            self.pending = []
        return r

    def save(self, path: Path, rows: list[dict[str, Any]], reps: list[dict[str, Any] | None]) -> None:
        """DIR/replicates.npz: each row's bootstrap replicates (``ROW-INDEX/METRIC``), to redo the checks."""
        import io

        import numpy as np

        from sparke.runs.folder import atomic_write

        arrays = {f"{i}/{m}": v for i, r in enumerate(reps) if r is not None for m, v in r.items()}
        if arrays:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            atomic_write(path, buffer.getvalue())

    def describe(self) -> dict[str, Any]:
        return {
            "method": "percentile bootstrap over prompt clusters (each with all its seed rounds), paired: the "
            "same resamples for every setting; means: plain percentile; Vendi, Cond-Vendi and differences: the "
            "percentile range moved so the replicates' median is the estimate; every interval contains its "
            "estimate and is clipped to the metric's range",
            "level": 0.95,
            "n_boot": self.n_boot,
            "units": "prompt clusters",
        }
