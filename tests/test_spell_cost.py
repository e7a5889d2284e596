"""The SPELL cost benchmark runs end to end on tiny sizes and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_helpers import SUBPROCESS_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_spell_cost_tiny(tmp_path):
    out = tmp_path / "spell.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "spell_cost.py"), "--tiny", "--out", str(out)]
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = ("exact", "projected", "indexed")
    assert [(r["n"], r["kind"]) for r in rows] == [(0, "none"), *((n, k) for n in (100, 1000) for k in kinds)]
    assert all(r["push_ms"] > 0 for r in rows)
