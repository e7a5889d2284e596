"""What sparke wrote before the ``Update`` refactor still loads, resumes and parses (tests/golden).

tests/golden was made by the code of commit dfd9a41 (``tests/golden/make_golden.py``, run with that commit's code):
an exact and an indexed bank file with the directions that code computed from them, four run folders of the
embedded model (SPARKE at its defaults, SPARKE with the paper's step, rke, none) and, for old ``--set`` and
``--variant`` strings, what the guide built from each held then.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sparke
from cli_helpers import cli, one_thread
from sparke.cli.bench import parse_variants
from sparke.cli.common import setting_value
from sparke.guidance.options import DEFAULTS
from sparke.methods import METHODS

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = json.loads((GOLDEN / "settings.json").read_text())
RUNS = json.loads((GOLDEN / "runs.json").read_text())
ATTRS = ("scale", "objective", "kernel", "sigma_image", "sigma_prompt", "every", "window", "space", "step")
ATTRS += ("step_schedule", "smooth", "centre", "gate", "orthogonal", "crowding", "motion", "warp")


# The plug-in's defaults when the fixtures were made, and the methods that take them (rke and vendi take the
# plug-in's schedule, not its scale). An old string that leaves one out gets today's default where it changed
# since (each change is in CHANGELOG.md): what the same command builds now.
FIXTURE_DEFAULTS = {"scale": (0.05, {"sparke"}), "every": ("auto", {"sparke", "rke", "vendi"})}


def _today(want: dict, method: str, given: set[str]) -> dict:
    changed = {
        k: DEFAULTS[k]
        for k, (old, methods) in FIXTURE_DEFAULTS.items()
        if method in methods and k not in given and DEFAULTS[k] != old
    }
    return {**want, **{k: v for k, v in changed.items() if k in want}}


def _describe(guide) -> dict:
    row = {name: getattr(guide, name) for name in ATTRS}
    row["window"] = list(row["window"])
    bank = guide.bank
    row["bank"] = type(bank).__name__
    if hasattr(bank, "crossover"):
        options = {k: bank.index_options[k] for k in ("neighbors", "samples")}
        row["bank_options"] = {"crossover": bank.crossover, **options}
    if hasattr(bank, "capacity"):
        row["capacity"] = bank.capacity
    return row


@pytest.mark.parametrize("name", ["exact", "indexed"])
def test_old_bank_files_load_and_give_the_same_directions(name):
    want = json.loads((GOLDEN / "bank-directions.json").read_text())
    bank = sparke.AutoBank.load(GOLDEN / f"{name}-bank.safetensors")
    assert len(bank) == 40 and bank.dim_x == 24 and bank.dim_y == 6
    probe, probe_y = torch.tensor(want["probe"]), torch.tensor(want["probe_y"])
    got = bank.direction(probe, probe_y)
    # float32 sums over 40 rows in another order than the old code's may differ by a few ulps
    torch.testing.assert_close(got, torch.tensor(want[name]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("item", sorted(SETTINGS["sets"]))
def test_old_set_strings_build_the_same_guide(item):
    key, _, raw = item.partition("=")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the command line's path warns about nothing
        guide = METHODS["sparke"].make(None, **{key: setting_value(raw)})
    assert _describe(guide) == _today(SETTINGS["sets"][item], "sparke", {key})


@pytest.mark.parametrize("option", sorted(SETTINGS["variants"]))
def test_old_variant_strings_parse_and_build_the_same_guides(option):
    want = SETTINGS["variants"][option]
    ((_, spec),) = parse_variants([option]).items()
    assert json.loads(json.dumps(spec)) == want["parsed"]
    guides = [METHODS[spec["method"]].make(s, **spec["options"]) for s in spec["scales"]]
    given = set(spec["options"]) | {"scale"}
    assert [_describe(g) for g in guides] == [_today(w, spec["method"], given) for w in want["guides"]]


def _generate(folder: Path, args: list[str]):
    return cli(
        "generate", "-p", "a red circle", "-p", "a blue square", "-n", "2", "--steps", "4", "-b", "2",
        "--out", folder, *args,
    )  # fmt: skip


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_old_run_folders_resume(name, tmp_path):
    """Rerunning the old command finds nothing to do; with its last batch removed (an interrupted run: the
    bank still holds the batch's rows) it makes that batch again, as the old code had made it."""
    folder = tmp_path / name
    shutil.copytree(GOLDEN / "runs" / name, folder)
    with one_thread():
        done = _generate(folder, RUNS[name])
        assert done.exit_code == 0, done.output
        assert "0 new" in done.output
        lines = (folder / "manifest.jsonl").read_text().splitlines()
        (folder / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n")
        for line in lines[2:]:
            (folder / json.loads(line)["file"]).unlink()
        again = _generate(folder, RUNS[name])
    assert again.exit_code == 0, again.output
    assert "2 new" in again.output
    assert (folder / "manifest.jsonl").read_text().splitlines()[2:] != []
    for line in lines[2:]:
        file = json.loads(line)["file"]
        old, new = _pixels(GOLDEN / "runs" / name / file), _pixels(folder / file)
        # float sums may round differently across machines and thread counts: at most one 8-bit level apart
        assert np.abs(old - new).max() <= 1, file
    bank = sparke.AutoBank.load(folder / "bank.safetensors")
    assert len(bank) == 4
