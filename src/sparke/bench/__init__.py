"""``sparke bench``: the ground-truth benchmark of SPARKE against the paper's baselines on the embedded model.

    from sparke.bench import QUICK, run_bench
    meta = run_bench(QUICK, "bench-out")    # writes results.json, results.md, meta.json, plots

See ``docs/benchmark.md`` for what is measured and how.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import FULL, QUICK, BenchConfig
from .runner import Setting

__all__ = ["FULL", "QUICK", "BenchConfig", "Setting", "run_bench", "settings_of"]


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
    from .runner import generate_setting, measure, reference_images

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    if pipe is None:
        from sparke.embedded.pipeline import load_pipeline

        pipe = load_pipeline(config.device, weights_dir=config.weights)
    if encoder is None:
        from sparke.embedded.encoder import load_encoder

        encoder = load_encoder(config.device)
    clusters = W.prompt_clusters(config.clusters, config.prompts, seed=config.seed)
    texts = sorted({p for cl in clusters for p in cl.prompts})
    prompt_features = dict(zip(texts, encode_minilm(texts).cpu(), strict=True))

    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    world = reference_images(clusters, config)
    rows.append(
        {
            "label": "world",
            "method": "world",
            "scale": 0.0,
            **measure(world, clusters, encoder, prompt_features),
        }
    )
    rows[-1]["sec_per_image"] = None
    rows[-1]["peak_mem_mb"] = None
    samples["world"] = world
    for setting in settings_of(config):
        torch.manual_seed(config.seed)
        gen = generate_setting(pipe, clusters, setting, config, progress=say)
        row = {"label": setting.label, "method": setting.method, "scale": setting.scale}
        if setting.options:
            row["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in setting.options.items()}
        row.update(measure(gen, clusters, encoder, prompt_features))
        rows.append(row)
        samples[f"{setting.label} {setting.scale:g}"] = gen
        say(
            f"{setting.label} {setting.scale:g}: fidelity {row['fidelity']:.3f} cond-vendi {row['cond_vendi']:.2f} "
            f"coverage {row['free_attribute_coverage']:.3f} {row['sec_per_image']:.2f} s/image "
            f"({time.perf_counter() - start:.0f} s elapsed)"
        )
        report.write_json(out / "results.json", rows)  # after each setting: a partial run still leaves rows

    mixture_rows = None
    if config.mixture:
        from .mixture import run_mixture

        say("2-D Gaussian mixture experiment")
        from .mixture import SCALES as MIX_SCALES

        mix_settings = [("none", 0.0, {})] + [
            (m, s, {"every": 4} if m in ("sparke", "rke", "vendi") else {})
            for m, scales in MIX_SCALES.items()
            for s in scales
        ]
        mixture_rows = run_mixture(mix_settings, out=out, seed=config.seed)
        report.write_json(out / "mixture.json", mixture_rows)

    meta = {
        "command": command or "sparke.bench.run_bench(...)",
        "config": config.to_dict(),
        "wall_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "goal": report.goal_check(rows),
        "best": {k: (None if v is None else v["scale"]) for k, v in report.best_rows(rows).items()},
    }
    report.write_json(out / "results.json", rows)
    report.write_json(out / "meta.json", meta)
    report.plot_tradeoff(out, rows)
    report.plot_samples(out, samples, clusters)
    report.write_markdown(out, rows, meta, mixture_rows)
    return meta
