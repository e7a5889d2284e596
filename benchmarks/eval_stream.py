"""Time and peak memory of ``sparke evaluate`` on generated image folders, beside the script a researcher
would write (PIL plus the same encoder, a batch at a time, then the same metrics).

Issue 30's targets: 300 PNGs of 1024 px evaluated under 1.5 GB peak, and the peak on 10,000 images within
20% of the peak on 1,000 (memory set by ``--batch-size``, not by the folder).

The images are made here with a fast numpy -> PIL loop (smooth random colour fields, so that PNGs stay a few
hundred kB; ``compress_level=1``), 100 prompts, an imagefolder ``metadata.jsonl``; a reference folder of the
same size is made when ``--reference`` runs are asked for. Each measurement runs in its own process, its peak
resident memory read with ``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone), with a cold feature
cache (a fresh ``--out`` folder). The features are the embedded shapes encoder (``--features embedded``,
the one encoder this offline CPU machine has): with a CLIP or DINOv2 model the encoder's own time dominates
and the figures of sparke's layer are the same in seconds, smaller in share. Example::

    PYTHONPATH=src nice -n 10 python benchmarks/eval_stream.py --sizes 1000x512,10000x512,300x1024 \\
        --markdown benchmarks/results/cpu-2core-2026-12-06-eval-stream.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = 100


def make_folder(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` PNGs of ``size`` px in ``folder`` with metadata.jsonl (prompt ``p<k>``, k < ``PROMPTS``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(count):
        base = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
        # a bilinear blend of four random corner colours: smooth, distinct, and quick to write and read
        top = base[0, 0] + ramp[:, None] * (base[0, 1] - base[0, 0])
        bottom = base[1, 0] + ramp[:, None] * (base[1, 1] - base[1, 0])
        pixels = top[None, :, :] + ramp[:, None, None] * (bottom - top)[None, :, :]
        name = f"{i:06d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name, compress_level=1)
        lines.append(json.dumps({"file_name": name, "prompt": f"p{i % PROMPTS}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def measure(command: list[str]) -> dict:
    """Run ``command`` in a child process: seconds, peak resident memory (MB), exit status, last output."""
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "120"}
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-600:]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1000 * 1.024, "status": status, "tail": tail}


RESEARCHER = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from sparke.embedded.encoder import load_encoder
from sparke.core import vendi, cond_vendi
from sparke.metrics import prdc, frechet_distance
from sparke.encoders.minilm import encode_minilm

def features(folder, encoder):
    rows = [json.loads(l) for l in (folder / "metadata.jsonl").read_text().splitlines()]
    out = []
    for start in range(0, len(rows), 64):
        batch = np.stack([np.asarray(Image.open(folder / r["file_name"]).convert("RGB"))
                          for r in rows[start:start + 64]])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        with torch.no_grad():
            out.append(torch.nn.functional.normalize(encoder(x), dim=1))
    return torch.cat(out), [r["prompt"] for r in rows]

encoder = load_encoder("cpu")
x, prompts = features(Path(sys.argv[1]), encoder)
unique = sorted(set(prompts))
y = encode_minilm(unique)[[unique.index(p) for p in prompts]]
if x.shape[0] <= 8192:
    print("vendi", vendi(x, sigma=0.3), "cond_vendi", cond_vendi(x, y, sigma_image=0.3, sigma_prompt=0.3))
if len(sys.argv) > 2:
    ref, _ = features(Path(sys.argv[2]), encoder)
    print(prdc(ref, x, nearest_k=5), frechet_distance(ref, x))
"""


def run_size(
    count: int, size: int, work: Path, reference: bool, researcher: bool, report: bool = False
) -> list[dict]:
    folder = work / f"gen-{count}-{size}"
    ref = work / f"ref-{count}-{size}"
    start = time.perf_counter()
    make_folder(folder, count, size, seed=0)
    if reference:
        make_folder(ref, count, size, seed=1)
    print(f"made {count} x {size} px in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []
    for with_ref in (False, True) if reference else (False,):
        out = work / f"out-{count}-{size}-{int(with_ref)}"
        out.mkdir()
        command = [sys.executable, "-m", "sparke", "evaluate", str(folder), "--features", "embedded"]
        command += ["--out", str(out / "metrics.json"), "--device", "cpu"]
        command += ["--reference", str(ref)] if with_ref else []
        result = measure(command)
        metrics = json.loads((out / "metrics.json").read_text()) if result["status"] == 0 else {}
        rows.append(_row("sparke evaluate", count, size, with_ref, result, metrics))
        if researcher:
            script = work / "researcher.py"
            script.write_text(RESEARCHER)
            command = [sys.executable, str(script), str(folder)] + ([str(ref)] if with_ref else [])
            rows.append(_row("researcher script", count, size, with_ref, measure(command), {}))
        print(json.dumps(rows[-1]), file=sys.stderr)
    if report:  # `sparke report` on the evaluated folder (its metrics.json from the run without --reference)
        shutil.copy(work / f"out-{count}-{size}-0" / "metrics.json", folder / "metrics.json")
        page = work / f"report-{count}-{size}.html"
        command = [sys.executable, "-m", "sparke", "report", str(folder), "--out", str(page), "--no-evaluate"]
        result = measure(command)
        row = _row("sparke report", count, size, False, result, {})
        row["page_mb"] = round(page.stat().st_size / 1e6, 2) if result["status"] == 0 else None
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    shutil.rmtree(folder)
    shutil.rmtree(ref, ignore_errors=True)
    return rows


def _row(tool: str, count: int, size: int, with_ref: bool, result: dict, metrics: dict) -> dict:
    if result["status"] != 0:
        print(result["tail"], file=sys.stderr)
    overall = metrics.get("overall") or {}
    return {
        "tool": tool,
        "images": count,
        "px": size,
        "reference": with_ref,
        "seconds": round(result["seconds"], 1),
        "images_per_s": round(count * (2 if with_ref else 1) / result["seconds"], 1),
        "peak_mb": round(result["peak_mb"]),
        "ok": result["status"] == 0,
        "vendi": overall.get("vendi"),
        "estimated": overall.get("estimated"),
    }


def markdown(rows: list[dict]) -> str:
    head = "| tool | images | px | --reference | seconds | images/s | peak RSS (MB) | page (MB) |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['tool']} | {r['images']:,} | {r['px']} | {'yes' if r['reference'] else 'no'} | {r['seconds']} "
        f"| {r['images_per_s']} | {r['peak_mb']:,}{'' if r['ok'] else ' (failed)'} | {r.get('page_mb') or ''} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300x1024", help="COUNTxPX, comma-separated")
    parser.add_argument("--reference", action="store_true", help="also with a reference folder as large")
    parser.add_argument("--researcher", action="store_true", help="also the researcher's script")
    parser.add_argument(
        "--report", action="store_true", help="also `sparke report` on each folder (page size)"
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one in /tmp)")
    parser.add_argument("--json", default=None, help="append the rows to this JSON file")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sparke-eval-stream-"))
    rows = []
    try:
        for spec in args.sizes.split(","):
            count, size = (int(v) for v in spec.lower().split("x"))
            rows += run_size(count, size, work, args.reference, args.researcher, args.report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores")
    print(markdown(rows))
    if args.json:
        file = Path(args.json)
        old = json.loads(file.read_text()) if file.is_file() else []
        file.write_text(json.dumps(old + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
