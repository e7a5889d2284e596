"""What the two training scripts share: their command line's common options and how they save a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch


def training_parser(description: str, *, out: str, steps: int, batch_size: int) -> argparse.ArgumentParser:
    """A parser with the options every training script has: --out, --steps, --batch-size, --device, --seed."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def save_trained(
    model: torch.nn.Module, out: str | Path, weights: str, info_file: str, info: dict[str, Any]
) -> Path:
    """Write ``model``'s weights as fp16 safetensors ``weights`` and ``info`` as JSON ``info_file`` in folder
    ``out`` (made if missing); returns ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / weights))
    (out / info_file).write_text(json.dumps(info, indent=1))
    return out
