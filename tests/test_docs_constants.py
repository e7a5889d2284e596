"""The limits and defaults the docs state are the code's constants (issue 21: the Vendi limit read 16,384 in
docs/cli.md while the code refused beyond 8,192; pg's documented default scale was stale)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _doc(name: str) -> str:
    return re.sub(r"\s+", " ", (ROOT / name).read_text(encoding="utf-8"))


def test_evaluation_limits():
    from sparke.core.scores import MAX_DENSE_ROWS
    from sparke.metrics.bootstrap import MAX_KERNEL_ROWS
    from sparke.report.grids import MAX_THUMBNAILS
    from sparke.runs.evaluation import RFF_FEATURES
    from sparke.runs.feature_cache import CHECKPOINT_ROWS

    cli = _doc("docs/cli.md")
    assert f"above {MAX_DENSE_ROWS:,} images (`sparke.core.scores.MAX_DENSE_ROWS`) they are estimated" in cli
    assert f"D = {RFF_FEATURES['vendi']:,}, bounded memory" in cli
    assert f"saved every {CHECKPOINT_ROWS:,} images" in cli
    assert f"at most {MAX_THUMBNAILS:,} images in all" in cli
    assert f"stop at {MAX_KERNEL_ROWS:,} images" in cli
    assert "16,384 images" not in cli


def test_run_size_limit():
    from sparke.cli.generate import MAX_RUN_IMAGES

    assert f"at most {MAX_RUN_IMAGES:,} images" in _doc("docs/cli.md")


def test_embedded_step_counts():
    from sparke.embedded.pipeline import CLEAN_STEPS, MIN_STEPS

    assert f"the embedded model: {MIN_STEPS} or more, and a warning below {CLEAN_STEPS}" in _doc(
        "docs/cli.md"
    )


@pytest.mark.parametrize("method", ["sparke", "rke", "vendi", "cads", "pg"])
def test_benchmark_method_table_gives_each_default_scale(method):
    from sparke.methods import METHODS

    row = next(
        line
        for line in (ROOT / "docs/benchmark.md").read_text().splitlines()
        if line.startswith(f"| `{method}` |")
    )
    scale = f"{METHODS[method].default_scale:g}"
    assert re.search(rf"(scale|noise scale) {re.escape(scale)}\b", row), (method, scale, row)


def test_bank_values_match_the_code():
    from sparke.core.auto import KINDS

    row = next(
        line for line in (ROOT / "docs/guide.md").read_text().splitlines() if line.startswith("| `bank` |")
    )
    assert all(f'`"{kind}"`' in row for kind in KINDS), row


def test_held_out_seeds_agree():
    import typing

    from sparke.cli.bench import bench_command

    seed_help = typing.get_type_hints(bench_command, include_extras=True)["seed"].__metadata__[0].help
    assert "3 and 4 are the held-out sets" in seed_help
    assert "(3, 4 are held out" in (ROOT / "docs/benchmark.md").read_text()


def test_readme_layout_names_every_command():
    from sparke.cli import app

    layout = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("  cli/"))
    for command in app.registered_commands:
        assert command.name in layout, command.name


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        in_code ^= line.startswith("```")
        if not in_code and (match := re.match(r"#+ (.*)", line)):
            slug, n = _slug(match.group(1)), 0
            while (f"{slug}-{n}" if n else slug) in found:  # repeated headings get -1, -2, ...
                n += 1
            found.add(f"{slug}-{n}" if n else slug)
    return found


USER_DOCS = ["README.md", "CHANGELOG.md", "experiments/README.md", "experiments/default-choice.md"]


@pytest.mark.parametrize("name", USER_DOCS + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))])
def test_relative_links_reach_their_file_and_heading(name):
    doc = ROOT / name
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), (name, target)
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), (name, target)


def test_docs_describe_the_product_not_its_history():
    """docs/ holds no run folder, no round plot and no issue- or round-named heading; benchmark.md stays short."""
    docs = ROOT / "docs"
    assert [p.name for p in docs.iterdir() if p.is_dir()] == []
    assert sorted(p.name for p in docs.glob("*.png")) == ["comfyui-nodes.png", "report.png"]
    history = re.compile(r"^#+ .*([Ii]ssue [0-9]+|[Rr]ounds? [a-z0-9]+)", re.M)
    for page in docs.glob("*.md"):
        assert not history.findall(page.read_text(encoding="utf-8")), page.name
    assert len((docs / "benchmark.md").read_text(encoding="utf-8").splitlines()) <= 250
