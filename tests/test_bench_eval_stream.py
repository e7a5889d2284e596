"""benchmarks/eval_stream.py runs end to end on tiny folders: sparke evaluate (with and without a reference),
the researcher's script and sparke report, each measured in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_eval_stream_tiny(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_stream.py"), "--sizes", "12x32", "--reference",
           "--researcher", "--report", "--work", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    tools = [(r["tool"], r["reference"]) for r in rows]
    assert tools == [("sparke evaluate", False), ("researcher script", False), ("sparke evaluate", True),
                     ("researcher script", True), ("sparke report", False)]  # fmt: skip
    assert all(r["ok"] and r["peak_mb"] > 0 and r["seconds"] > 0 for r in rows), rows
    assert rows[0]["vendi"] is not None and rows[-1]["page_mb"] > 0
    assert not (tmp_path / "work").exists()  # the generated folders are deleted
    assert "| sparke evaluate | 12 | 32 | no |" in done.stdout
