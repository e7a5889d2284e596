"""The report fits its window (issue 21): no sideways scroll at 1400 and 480 px in headless Chromium, measured
through the page's own ``scrollWidth``; legends that fit; rate axes from 0 to 1; one scale-free x axis; a
caption for every column."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import cli, fake_run
from sparke.report import line_plot
from sparke.report.plots import relative_scale
from sparke.report.tables import COLUMN_HELP

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the issue's wide case: six methods (cads' noise std beside step sizes), chips of free attributes
RUNS = [("none", 0.0), ("sparke", 0.01), ("sparke", 0.03), ("sparke", 0.1), ("pg", 0.003), ("pg", 0.01),
        ("cads", 0.25), ("rke", 0.03), ("vendi", 0.03)]  # fmt: skip
PROMPTS = [("red circle", "a red circle"), ("blue squares", "two blue squares")]


@pytest.fixture(scope="module")
def wide_page(tmp_path_factory) -> Path:
    from PIL import Image

    from sparke.embedded import world

    root = tmp_path_factory.mktemp("wide-report")
    runs = []
    for k, (method, scale) in enumerate(RUNS):
        cv = 2.0 + k / 10
        metrics = {"cond_vendi": cv, "cond_rke": cv - 0.4, "vendi": 3 * cv, "rke": cv, "in_batch_similarity": 0.5,
                   "match_rate": 0.98, "match_shape_colour": 1.0,
                   "ci": {"cond_vendi": [cv - 0.2, cv + 0.2], "match_rate": [0.9, 1.0], "match_shape_colour": [1.0, 1.0]}}  # fmt: skip
        run = fake_run(root / f"{method}-{scale:g}-with-a-long-folder-name", method=method, scale=scale,
                       prompts=PROMPTS, per_prompt=16, seed=k, metrics=metrics, model="embedded")  # fmt: skip
        rng = np.random.default_rng(k)
        for i in range(32):  # scenes the checker reads: many positions, sizes and backgrounds (many chips)
            shape, colour, count = ("circle", "red", 1) if i < 16 else ("square", "blue", 2)
            scene = world.sample_scene(rng, shape, colour, count=count)
            Image.fromarray(world.render(scene)).save(run / "images" / f"{i:06d}.png")
        runs.append(run)
    out = root / "report.html"
    result = cli("report", *runs, "--out", out, "--no-evaluate")
    assert result.exit_code == 0, result.output
    return out


def _page_width(page: Path, tmp_path: Path, width: int) -> dict:
    """The page's own scrollWidth and clientWidth in a viewport ``width`` px wide, and the elements that stick
    out of it (outside boxes that scroll by themselves). Headless Chromium opens no window narrower than 500
    px, so the page is shown in an iframe of that width (its own viewport: media queries and scrollWidth
    apply to it), and reports through postMessage to the outer page, whose DOM Chromium dumps."""
    probe = tmp_path / f"probe-{width}.html"
    script = (
        "<script>(function(){var d=document.documentElement,w=d.clientWidth,out=[];"
        "document.querySelectorAll('body *').forEach(function(e){var r=e.getBoundingClientRect();"
        "if(r.right>w+0.5&&!(e.parentElement&&e.parentElement.closest('.scroll,pre')))"
        "out.push(e.tagName+'.'+e.className+':'+Math.round(r.right));});"
        "parent.postMessage(JSON.stringify({scroll:d.scrollWidth,client:w,out:out.slice(0,8)}),'*');})();</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    outer = tmp_path / f"outer-{width}.html"
    outer.write_text(
        "<!DOCTYPE html><html><body style='margin:0'><script>window.addEventListener('message',function(m){"
        "document.body.setAttribute('data-probe',m.data);});</script>"
        f"<iframe src='{probe.name}' width='{width}' height='900' style='border:0;display:block'></iframe>"
        "</body></html>"
    )
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
         "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={max(width + 100, 600)},1000", "--dump-dom", outer.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
    assert found, result.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)
@pytest.mark.parametrize("width", [1400, 480])
def test_no_sideways_scroll(wide_page, tmp_path, width):
    probe = _page_width(wide_page, tmp_path, width)
    assert probe["client"] == width and probe["scroll"] <= probe["client"] and not probe["out"], probe


def test_the_probe_sees_a_page_that_scrolls(tmp_path):
    """The measurement can fail: a 2000 px wide block makes the page scroll at 480 px."""
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed")
    wide = tmp_path / "wide.html"
    wide.write_text("<!DOCTYPE html><html><body><div style='width:2000px'>x</div></body></html>")
    probe = _page_width(wide, tmp_path, 480)
    assert probe["scroll"] > probe["client"] and probe["out"], probe


def test_page_text(wide_page):
    text = wide_page.read_text()
    for metric, sentence in COLUMN_HELP.items():  # a caption explains each column
        if metric != "scale":
            assert html.escape(sentence) in text, metric
    assert "x axis is the scale divided by the method's default" in text
    svgs = re.findall(r"<svg.*?</svg>", text, flags=re.S)
    assert len(svgs) == 5
    for svg in svgs:
        width = float(re.search(r'width="([\d.]+)"', svg).group(1))
        legend = re.findall(r'<line x1="([\d.]+)" x2="[\d.]+" y1="[\d.]+" y2="[\d.]+" stroke="[^"]+" stroke-width="2"'
                            r'(?: stroke-dasharray="5 4")?/><text x="[\d.]+" y="[\d.]+" fill="#1d2330">([^<]+)</text>',
                            svg)  # fmt: skip
        assert len(legend) == 7  # six methods and the dashed level of none
        for x, label in legend:  # each entry ends inside the plot (~6.5 px a character at 11 px)
            assert float(x) + 20 + 6.5 * len(label) <= width, (label, x)
    rates = [svg for svg in svgs if "fidelity" in svg]
    assert len(rates) == 2
    for svg in rates:  # rate axes: 0 to 1, never beyond
        ticks = re.findall(r'text-anchor="end" fill="#5d6677">([^<]+)</text>', svg)
        assert ticks == ["0", "0.25", "0.5", "0.75", "1"], ticks


def test_relative_scale_puts_every_method_on_one_axis():
    from sparke.methods import METHODS

    for name, spec in METHODS.items():
        if spec.has_scale and spec.default_scale:
            assert relative_scale(name, spec.default_scale) == pytest.approx(1.0)
            assert relative_scale(name, 3 * spec.default_scale) == pytest.approx(3.0)
    assert relative_scale("none", 0.0) == 0.0
    assert relative_scale("some-old-method", 0.2) == 0.2  # unknown: its own scale


def test_points_at_the_ends_of_the_axis_stay_inside_the_frame():
    svg = line_plot([{"label": "a", "points": [(0.0, 1.0), (1.0, 2.0)]}], title="t", x_label="x", y_label="y")
    frame = re.search(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    left, right = float(frame.group(1)), float(frame.group(1)) + float(frame.group(2))
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', svg)]
    assert all(left + 3.5 <= x <= right - 3.5 for x in xs), (left, right, xs)
