"""Issue 30: ``sparke evaluate`` streams images (memory set by the batch), resumes an interrupted run from its
partial feature cache, estimates kernel scores past the exact limit, reads 16-bit and transparent images
correctly, refuses a bad image in one line; ``sparke report`` shows any evaluated image folder, lightly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import cli, one_error_line, one_thread
from sparke.runs import RunError
from sparke.runs.evaluation import FeatureExtractor, evaluate_run, group_metrics
from sparke.runs.feature_cache import image_features
from sparke.runs.imagefolder import read_image_folder


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with one_thread():
        yield


def _folder(root: Path, n: int, size: int = 16, prompts: int = 2, seed: int = 0, mode: str = "noise") -> Path:
    """``n`` PNGs with imagefolder metadata, prompt ``p<i % prompts>``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        if mode == "noise":
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:  # smooth colour fields: small PNGs, large pages only if the page holds too many
            pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
        Image.fromarray(pixels).save(root / f"{i:05d}.png", compress_level=1)
        rows.append(json.dumps({"file_name": f"{i:05d}.png", "prompt": f"p{i % prompts}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def _mean_colour_extractor(calls: list[int] | None = None, fail_after: int | None = None) -> FeatureExtractor:
    """A deterministic 'encoder': the mean colour and its square per channel (6-d), counting images seen."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            if fail_after is not None and sum(calls) >= fail_after:
                raise KeyboardInterrupt
            calls.append(x.shape[0])
        m = x.float().mean((2, 3))
        return torch.cat([m + 2.0, m * m + 1.0], 1)

    return FeatureExtractor("mean-colour", encode, "cpu", batch_size=4)


def test_streamed_features_equal_the_all_at_once_ones(tmp_path):
    folder = read_image_folder(_folder(tmp_path / "f", 11))
    rows, size = image_features(folder, _mean_colour_extractor())
    reference = _mean_colour_extractor()(folder.load_images())
    assert size == (16, 16)
    assert torch.allclose(rows, reference, atol=1e-6)  # float32 sums in another order: 1e-6 on unit rows


def test_batches_are_decoded_a_batch_at_a_time(tmp_path):
    """At most two batches of decoded images are held: the batch handed out and the one being decoded."""
    folder = read_image_folder(_folder(tmp_path / "f", 20))
    seen = []
    original = folder.read_image

    def counting(record):
        seen.append(record["file"])
        return original(record)

    folder.read_image = counting  # type: ignore[method-assign]
    batches = folder.iter_batches(4)
    rows, images = next(batches)
    assert rows == [0, 1, 2, 3] and images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 16, 16)
    assert len(seen) <= 8  # this batch and the next, never the folder


def test_mixed_sizes_come_out_in_same_size_runs(tmp_path):
    from PIL import Image

    root = _folder(tmp_path / "f", 5)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(root / "00002.png")
    folder = read_image_folder(root)
    parts = list(folder.iter_batches(5))
    assert [rows for rows, _ in parts] == [[0, 1], [2], [3, 4]]
    assert [tuple(images.shape[-2:]) for _, images in parts] == [(16, 16), (8, 12), (16, 16)]


def test_an_interrupted_evaluation_resumes_after_the_finished_images(tmp_path):
    from sparke.runs import feature_cache

    folder = read_image_folder(_folder(tmp_path / "f", 12))
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        image_features(folder, _mean_colour_extractor(calls, fail_after=8), tmp_path)
    assert sum(calls) == 8
    partial = list(tmp_path.glob("*" + feature_cache.PARTIAL_SUFFIX))
    assert len(partial) == 1
    again: list[int] = []
    rows, _ = image_features(folder, _mean_colour_extractor(again), tmp_path)
    assert sum(again) == 4  # only the images not finished before the interrupt
    assert not list(tmp_path.glob("*" + feature_cache.PARTIAL_SUFFIX))
    assert torch.allclose(rows, _mean_colour_extractor()(folder.load_images()), atol=1e-6)
    third: list[int] = []
    image_features(folder, _mean_colour_extractor(third), tmp_path)
    assert third == []  # the finished cache file is read back whole


def test_progress_is_told_each_batch(tmp_path):
    folder = read_image_folder(_folder(tmp_path / "f", 10))
    told = []
    image_features(folder, _mean_colour_extractor(), None, lambda done, total: told.append((done, total)))
    assert told == [(0, 10), (4, 10), (8, 10), (10, 10)]


def test_past_the_exact_limit_vendi_is_estimated_and_said(monkeypatch):
    """Past MAX_DENSE_ROWS the exact scores refuse; the RFF estimates take over and metrics.json says so.
    The limit is lowered to 40 rows here so that the estimate can be compared with the exact value."""
    from sparke.core import rke, scores, vendi

    rng = np.random.default_rng(0)
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((60, 8))).float(), dim=1)
    y = torch.nn.functional.normalize(torch.ones(60, 4), dim=1)
    exact = vendi(x, sigma=0.3)
    monkeypatch.setattr(scores, "MAX_DENSE_ROWS", 40)
    monkeypatch.setattr("sparke.runs.evaluation.MAX_DENSE_ROWS", 40)
    out = group_metrics(x, y, ["p"] * 60, kernel="gaussian", sigma_image=0.3, sigma_prompt=0.3)
    assert set(out["estimated"]) == {"vendi", "rke", "cond_vendi", "cond_rke"}  # bounded memory, all four
    # RFF with D = 2048 on 60 rows: within 10% of the exact score (tests/test_metrics.py measures the error)
    assert out["vendi"] == pytest.approx(exact, rel=0.1)
    assert out["rke"] == pytest.approx(rke(x, sigma=0.3), rel=0.1)  # D = 8192: unbiased pair sums


def test_16_bit_greyscale_keeps_its_levels():
    from PIL import Image

    from sparke.runs.imagefolder import pixels_rgb8

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    im = Image.fromarray(ramp)  # mode I;16
    rgb = pixels_rgb8(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    # level v of 65535 maps to round(v / 65535 * 255): mid grey stays mid grey, not white
    expected = np.rint(ramp / 65535 * 255).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert rgb.mean() == pytest.approx(expected.mean()) and rgb.mean() < 140


def test_16_bit_and_rgba_pngs_read_from_a_folder(tmp_path):
    """What evaluate reads: a 16-bit grey PNG keeps its level (not white), an RGBA one is composited on white."""
    from PIL import Image

    Image.fromarray(np.full((8, 8), 16384, np.uint16)).save(tmp_path / "grey16.png")  # a quarter of 65535
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # blue, fully transparent: a viewer shows white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    lines = [json.dumps({"file_name": n, "prompt": "p"}) for n in ("grey16.png", "clear.png")]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    folder = read_image_folder(tmp_path)
    assert np.all(folder.read_image(folder.records[0]) == 64)  # 16384 / 65535 * 255 = 63.75 -> 64
    assert np.all(folder.read_image(folder.records[1]) == 255)


def test_transparency_is_composited_over_white():
    from PIL import Image

    from sparke.runs.imagefolder import pixels_rgb8

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, :2, 3] = 255  # left half opaque, right half transparent
    rgba[:, 2, 3] = 128  # one column half transparent
    out = pixels_rgb8(Image.fromarray(rgba, "RGBA"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 3].tolist() == [255, 255, 255]  # not the black of dropped alpha
    assert out[0, 2, 1] == pytest.approx(127, abs=1)  # half of white: 255 * (1 - 128/255) = 127


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    root = _folder(tmp_path / "f", 6, size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: PIL raises
    line = one_error_line(cli("evaluate", root))
    assert re.fullmatch(r"error: \S*00000\.png: Image size \(4096 pixels\) exceeds limit.*", line), line
    with pytest.raises(RunError, match="exceeds limit"):
        read_image_folder(root).read_image({"file": "00001.png"})


def test_a_single_image_per_prompt_is_noted(tmp_path):
    folder = read_image_folder(_folder(tmp_path / "f", 6, prompts=6))
    result = evaluate_run(folder, _mean_colour_extractor(), write=False)
    assert any("every prompt cluster holds a single image" in n for n in result["notes"])
    result = evaluate_run(
        read_image_folder(_folder(tmp_path / "g", 6)), _mean_colour_extractor(), write=False
    )
    assert not any("single image" in n for n in result.get("notes", []))


def test_report_on_a_large_image_folder_stays_light(tmp_path):
    """A sample per prompt keeps the page light: 3,000 noise images of 64 px (the worst case for compression)
    in 300 prompts give 300 grids of 3 JPEG thumbnails (1,000 // 300), not 3,000 images."""
    root = _folder(tmp_path / "big", 3000, size=64, prompts=300)
    evaluate_run(read_image_folder(root), _mean_colour_extractor())
    out = tmp_path / "report.html"
    result = cli("report", root, "--out", out, "--max-prompts", "1000", "--no-evaluate")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Showing a sample of at most 3 images per prompt and run" in page
    assert len(re.findall(r"<img ", page)) == 300 and page.count("(3 of 10)") == 300
    assert page.count("data:image/jpeg;base64,") == 300  # 64 px cells are photographs: JPEG
    # 900 noise thumbnails of 64 px at JPEG quality 80: 3.6 MB measured; 3,000 in PNG grids would be ~37 MB
    assert out.stat().st_size < 5_000_000


def test_metric_cards_replace_the_table_on_narrow_screens(tmp_path):
    root = _folder(tmp_path / "f", 8)
    result = cli("evaluate", root)
    assert result.exit_code == 0, result.output
    result = cli("report", root, "--out", tmp_path / "r.html")  # a plain image folder, evaluated
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    cards = re.search(r"<div class='metric-cards'>(.*?)</div></div>", page, flags=re.S).group(1)
    metrics = json.loads((root / "metrics.json").read_text())
    assert f"<dd>{metrics['overall']['vendi']:.2f}" in cards
    low, high = metrics["overall"]["ci"]["cond_vendi"]  # the intervals of metrics.json, in table and cards
    assert page.count(f"[{low:.2f}, {high:.2f}]") == 2
    narrow = re.search(r"@media \(max-width: 640px\) \{(.*?)\n\}", page, flags=re.S).group(1)
    assert ".metrics-wide { display: none; }" in narrow and ".metric-cards { display: grid; }" in narrow
