"""Make tests/golden with the code of dfd9a41 (before the Update refactor): banks, run folders, and what the old
guides made of old --set / --variant strings. Run with PYTHONPATH=<old>/src."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import sparke
from sparke.cli.bench import parse_variants
from sparke.methods import METHODS

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
gen = torch.Generator().manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(40, 24, generator=gen), dim=1)
y = torch.nn.functional.normalize(torch.randn(40, 6, generator=gen), dim=1)
exact = sparke.Bank(metadata={"space": "x0-centred"})
exact.add(x[:20], y[:20])
exact.add(x[20:], y[20:])
exact.save(out / "exact-bank.safetensors")
indexed = sparke.IndexedBank(24, 6, neighbors=8, samples=8, search_dim=8)
indexed.add(x[:20], y[:20])
indexed.add(x[20:], y[20:])
indexed.save(out / "indexed-bank.safetensors")
probe = torch.nn.functional.normalize(torch.randn(3, 24, generator=gen), dim=1)
probe_y = y[:3]

expected = {
    "exact": exact.direction(probe, probe_y).tolist(),
    "indexed": indexed.direction(probe, probe_y).tolist(),
    "probe": probe.tolist(),
    "probe_y": probe_y.tolist(),
}
(out / "bank-directions.json").write_text(json.dumps(expected))

SETS = [
    "centre=0.5",
    "crowding=0.5",
    "gate=1.1",
    "motion=0",
    "motion=2",
    "motion=4",
    "motion=global",
    "orthogonal=true",
    "smooth=1",
    "step_schedule=noise",
    "warp=true",
    "crossover=100",
    "neighbors=64",
    "samples=32",
    "step=raw",
    "kernel=cosine",
    "space=latent",
    "centre=false",
    "every=5",
    "window=[0,0.5]",
    "sigma_image=median",
    "objective=rke",
]
VARIANTS = [
    "centre 0.5:sparke:0.02,0.03:centre=0.5",
    "crowding 0.5:sparke:0.06,0.03:crowding=0.5",
    "latent, crowding 0.5:sparke:0.03,0.06:space=latent;centre=false;crowding=0.5",
    "latent:sparke:0.02:space=latent;centre=false",
    "motion 2:sparke:0.03,0.06,0.09:motion=2",
    "orthogonal, centre 0.5:sparke:0.03,0.06:orthogonal=true;centre=0.5",
    "sparke gated 1.3:sparke:0.03:gate=1.3",
    "sparke latent:sparke:0.01:space=latent;centre=false;motion=0",
    "sparke x0 centred:sparke:0.03:space=x0;centre=true",
    "sparke early:sparke:0.03,0.06:window=[0.0,0.5]",
    "rke latent:rke:0.03:every=5",
    "vendi small:vendi:0.03:memory=20",
]
ATTRS = (
    "scale",
    "objective",
    "kernel",
    "sigma_image",
    "sigma_prompt",
    "every",
    "window",
    "space",
    "step",
    "step_schedule",
    "smooth",
    "centre",
    "gate",
    "orthogonal",
    "crowding",
    "motion",
    "warp",
)


def describe(guide):
    row = {}
    for name in ATTRS:
        value = getattr(guide, name)
        row[name] = list(value) if isinstance(value, tuple) else value
    bank = guide.bank
    row["bank"] = type(bank).__name__
    if hasattr(bank, "crossover"):
        row["bank_options"] = {
            "crossover": bank.crossover,
            **{k: bank.index_options[k] for k in ("neighbors", "samples")},
        }
    if hasattr(bank, "capacity"):
        row["capacity"] = bank.capacity
    return row


from sparke.cli.common import setting_value  # noqa: E402

sets = {}
for item in SETS:
    key, _, raw = item.partition("=")
    sets[item] = describe(METHODS["sparke"].make(None, **{key: setting_value(raw)}))
variants = {}
for option in VARIANTS:
    ((label, spec),) = parse_variants([option]).items()
    variants[option] = {
        "parsed": spec,
        "guides": [describe(METHODS[spec["method"]].make(s, **spec["options"])) for s in spec["scales"]],
    }
(out / "settings.json").write_text(json.dumps({"sets": sets, "variants": variants}, indent=1, default=str))

runs = {
    "sparke-defaults": ["--method", "sparke"],
    "sparke-paper": [
        "--method",
        "sparke",
        "--space",
        "latent",
        "--no-centre",
        "--set",
        "motion=0",
        "--scale",
        "0.03",
    ],
    "rke": ["--method", "rke"],
    "none": ["--method", "none"],
}
for name, args in runs.items():
    cmd = [
        "sparke",
        "generate",
        "-p",
        "a red circle",
        "-p",
        "a blue square",
        "-n",
        "2",
        "--steps",
        "4",
        "-b",
        "2",
        "--out",
        str(out / "runs" / name),
        *args,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
(out / "runs.json").write_text(json.dumps({k: v for k, v in runs.items()}, indent=1))
print("ok")
