"""``sparke report``: one self-contained HTML page, checked as text and rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_helpers import cli, fake_run, one_error_line, said
from sparke.report import build_report, line_plot

CLUSTERS = [
    ("red circle", "a red circle"),
    ("red circle", "a crimson disc"),
    ("blue squares", "two blue squares"),
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """none and SPARKE at two scales, with metrics.json (so no model is needed)."""
    root = tmp_path_factory.mktemp("report-runs")
    spec = [("none", 0.0, 2.5, 0.7), ("sparke", 0.05, 2.9, 0.68), ("sparke", 0.1, 3.3, 0.5)]
    return [
        fake_run(
            root / f"{method}-{scale:g}",
            method=method,
            scale=scale,
            prompts=CLUSTERS,
            seed=k,
            metrics={
                "cond_vendi": cv,
                "cond_rke": cv - 0.4,
                "vendi": 2 * cv,
                "rke": cv,
                "in_batch_similarity": 0.6 - cv / 10,
                "match_rate": match,
            },
        )
        for k, (method, scale, cv, match) in enumerate(spec)
    ]


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = cli("report", *runs, "--out", out, "--title", "Demo <report>", "--no-evaluate")
    assert result.exit_code == 0, result.output
    assert str(out) in said(result)
    return out


def test_self_contained(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # nothing loaded from elsewhere: no URL in a src/href, no @import, a CSP that forbids every other source
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert "default-src 'none'" in text and "img-src data:" in text
    assert text.count("data:image/png;base64,") == 3 * 3  # 3 prompts x 3 runs
    assert "<title>Demo &lt;report&gt;</title>" in text  # escaped


def test_contents(page):
    text = page.read_text()
    for name in ("none-0", "sparke-0.05", "sparke-0.1"):
        assert name in text
    assert "Cond-Vendi" in text and "Diversity against guidance scale" in text
    assert text.count("<svg") == 4  # Cond-Vendi, Vendi, in-batch similarity, match rate against scale
    assert "class='best'>3.30<" in text  # best Cond-Vendi highlighted
    assert "red circle" in text and "two blue squares" in text
    assert "a crimson disc" in text


def test_no_plot_for_one_scale(runs, tmp_path):
    out = build_report(runs[:1], tmp_path / "one.html")
    assert "<svg" not in out.read_text()


def test_line_plot_svg():
    svg = line_plot(
        [{"label": "a", "points": [(0, 1.0), (0.1, 2.0)]}, {"label": "b", "points": [(0, None)]}],
        title="t",
        x_label="x",
        y_label="y",
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<path" in svg
    assert line_plot([{"label": "a", "points": [(0, None)]}], title="t", x_label="x", y_label="y") == ""


def test_line_plot_starts_at_zero_so_a_small_difference_stays_small():
    series = [{"label": "a", "points": [(0, 2.50), (0.01, 2.515)]}]
    zoomed = line_plot(series, title="t", x_label="x", y_label="y")
    honest = line_plot(series, title="t", x_label="x", y_label="y", y_from_zero=True)

    def y_ticks(svg: str) -> list[float]:
        return [float(v) for v in re.findall(r'text-anchor="end" fill="#5d6677">([-0-9.e]+)<', svg)]

    assert min(y_ticks(zoomed)) > 2.0  # auto-zoom: a 0.6% step fills the plot
    assert min(y_ticks(honest)) == 0.0 and max(y_ticks(honest)) >= 2.515


def test_line_plot_draws_intervals():
    svg = line_plot(
        [{"label": "a", "points": [(0, 1.0), (0.1, 2.0)], "ci": {0: (0.8, 1.2), 0.1: (1.7, 2.3)}}],
        title="t",
        x_label="x",
        y_label="y",
        y_from_zero=True,
    )
    assert svg.count('opacity="0.6"') == 2


def test_intervals_and_small_run_note(runs, tmp_path):
    import json

    for run in runs:
        data = json.loads((run / "metrics.json").read_text())
        cv = data["overall"]["cond_vendi"]
        data["overall"]["ci"] = {"cond_vendi": [cv - 0.3, cv + 0.3]}
        (run / "metrics.json").write_text(json.dumps(data))
    try:
        text = build_report(runs, tmp_path / "ci.html").read_text()
    finally:
        for run in runs:
            data = json.loads((run / "metrics.json").read_text())
            data["overall"].pop("ci")
            (run / "metrics.json").write_text(json.dumps(data))
    assert "<small class='ci'>[2.20, 2.80]</small>" in text
    assert "95% bootstrap interval" in text
    # 12 images in 2 clusters per run: the page says plainly that the differences may be noise
    assert "Too small to conclude" in text and "12 images in 2 prompt clusters" in text


def test_bad_input(tmp_path, runs):
    line = one_error_line(cli("report", tmp_path / "nowhere", "--out", tmp_path / "r.html"))
    assert line.endswith("nowhere: no such folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(cli("report", runs[0], "--out", blocker / "r.html", "--no-evaluate"))
    assert "cannot write" in line or "not a folder" in line


def _chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)
def test_renders_in_chromium_without_console_errors(page, tmp_path):
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the inline script ran: it wrote the prompt count into the page
    assert "3 of 3 prompts" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert "Refused to" not in dom.stderr  # nothing blocked by the page's own CSP
    shot = tmp_path / "shot.png"
    result = _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables, plots and images were drawn


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)
def test_chromium_reports_console_errors(tmp_path):
    """The console check above can see an error: a page with a failing script trips it."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    result = _chromium(bad, tmp_path, "--dump-dom")
    assert any("CONSOLE" in line or "Uncaught" in line for line in result.stderr.splitlines()), result.stderr
