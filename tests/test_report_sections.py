"""The report's extra cluster sections come from a registry (``sparke.core.extensions``) that lower layers
fill: the shapes world's free-attributes block is registered by ``sparke.embedded``, not hard-coded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import sparke.report


def test_the_report_names_no_shapes_world_code():
    code = "".join(p.read_text() for p in Path(sparke.report.__file__).parent.glob("*.py"))
    assert (
        "free_attributes" not in code
        and "sparke.embedded.checker" not in code
        and "report_section" not in code
    )


def test_a_registered_section_appears_in_each_cluster(tmp_path):
    from PIL import Image

    from sparke.core.extensions import CLUSTER_SECTIONS, register_cluster_section
    from sparke.report import build_report
    from sparke.report.sections import cluster_sections

    cluster_sections()  # imports the providers, which register their sections
    assert "shapes-world free attributes" in CLUSTER_SECTIONS
    root = tmp_path / "f"
    root.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "prompt": f"p{i % 2}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")

    def members_section(infos, members, by_run_prompt):
        return f"<p class='probe'>{len(infos)} run: {', '.join(members)}</p>"

    register_cluster_section("probe", members_section)
    try:
        page = build_report([root], tmp_path / "r.html").read_text()
    finally:
        del CLUSTER_SECTIONS["probe"]
    assert page.count("<p class='probe'>") == 2
    assert "<p class='probe'>1 run: p0</p>" in page and "<p class='probe'>1 run: p1</p>" in page
