"""``sparke evaluate`` on plain image folders (Hugging Face imagefolder metadata), with --reference, --out,
--clip and the feature cache; tiny random DINOv2 and CLIP models saved and loaded by path, as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sparke
from cli_helpers import cli, folder_state, one_error_line, one_thread
from sparke.metrics import frechet_distance, prdc
from sparke.runs.evaluation import load_features
from sparke.runs.imagefolder import read_image_folder

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with one_thread():
        yield


def _save_png(file: Path, rng: np.random.Generator, size: tuple[int, int] = (32, 32)) -> None:
    from PIL import Image

    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(file)


def _image_folder(root: Path, n: int = 8, seed: int = 0, metadata: str = "jsonl", column: str = "prompt"):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"img/{i:03d}.png"
        _save_png(root / name, rng)
        rows.append({"file_name": name, column: PROMPTS[i % 2]})
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = [f"file_name,{column}"] + [f"{r['file_name']},{r[column]}" for r in rows]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A random DINOv2 and a random CLIPModel (with its tokenizer), saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    from tiny_pipelines import clip_tokenizer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dino = Dinov2Config(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8,
    )  # fmt: skip
    Dinov2Model(dino).eval().save_pretrained(root / "dinov2")
    text = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=1000, hidden_size=32,
                intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval().save_pretrained(
        root / "clip"
    )
    clip_tokenizer().save_pretrained(root / "clip")
    return {"dinov2": root / "dinov2", "clip": root / "clip"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    reference = root / "reference"  # no metadata, images of two sizes, one in a subfolder
    rng = np.random.default_rng(7)
    for i in range(9):
        _save_png(reference / ("deep" if i == 0 else "") / f"r{i}.png", rng, (32, 32) if i % 3 else (40, 48))
    return {"generated": _image_folder(root / "generated"), "reference": reference}


def _features(folder: Path, model: Path) -> torch.Tensor:
    """The DINOv2 rows of a folder's images, image by image (no batching, no cache)."""
    from PIL import Image

    extractor = load_features(str(model), "cpu")
    files = sorted(p for p in folder.rglob("*.png"))
    rows = []
    for file in files:
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 127.5 - 1
        rows.append(extractor(torch.from_numpy(pixels).permute(2, 0, 1)[None]))
    return torch.cat(rows)


def test_plain_folder_with_reference_out_and_clip(folders, models, tmp_path):
    out = tmp_path / "results" / "scores.json"
    out.parent.mkdir()
    before = folder_state(folders["generated"])
    args = ["evaluate", folders["generated"], "--features", models["dinov2"], "--device", "cpu"]
    result = cli(*args, "--reference", folders["reference"], "--out", out, "--clip", models["clip"])
    assert result.exit_code == 0, result.output
    assert folder_state(folders["generated"]) == before  # --out: nothing written into the folder
    for label in ("Vendi", "Precision", "Recall", "Density", "Coverage", "Fréchet", "CLIPScore"):
        assert label in result.stdout
    data = json.loads(out.read_text())
    overall = data["overall"]
    assert data["n_images"] == 8 and data["manifest"] is None and data["reference"]["n_images"] == 9
    x = _features(folders["generated"], models["dinov2"])
    ref = _features(folders["reference"], models["dinov2"])
    # float32 features batched vs one by one: the same up to float32 rounding; PRDC counts are then equal
    want = prdc(ref, x, nearest_k=5)
    for key, value in want.items():
        assert overall[key] == pytest.approx(value, abs=1e-6), key
    assert overall["frechet"] == pytest.approx(frechet_distance(ref, x), rel=1e-4)
    assert overall["clip_score"] == pytest.approx(_clip_score(folders["generated"], models["clip"]), rel=1e-5)
    assert [c["clip_score"] for c in data["clusters"]] == pytest.approx(
        [_clip_score(folders["generated"], models["clip"], only=p) for p in PROMPTS], rel=1e-5
    )
    caches = sorted(out.parent.glob("features-dinov2-*.safetensors"))
    assert len(caches) == 2  # the generated folder's and the reference's, beside the metrics


def _clip_score(folder: Path, model_dir: Path, only: str | None = None) -> float:
    """CLIPScore from CLIPModel's own forward: logits_per_image / logit_scale = the cosines."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPModel

    model, tokenizer = CLIPModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    records = read_image_folder(folder).records
    scores = []
    for record in records:
        if only is not None and record["prompt"] != only:
            continue
        pixels = np.asarray(Image.open(folder / record["file"]).convert("RGB"), dtype=np.float32) / 255
        mean, std = (
            np.array([0.48145466, 0.4578275, 0.40821073]),
            np.array([0.26862954, 0.26130258, 0.27577711]),
        )
        pixel_values = torch.from_numpy(((pixels - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
        tokens = tokenizer([record["prompt"]], return_tensors="pt")
        with torch.no_grad():
            output = model(input_ids=tokens["input_ids"], pixel_values=pixel_values)
        cosine = float(output.logits_per_image[0, 0] / model.logit_scale.exp())
        scores.append(100 * max(cosine, 0.0))
    return float(np.mean(scores))


def test_feature_cache_is_read_back(folders, models, tmp_path):
    """Computed once per (folder, encoder, image hashes); another kernel reads the stored rows back."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = _image_folder(tmp_path / "gen", seed=3)
    args = ["evaluate", folder, "--features", models["dinov2"], "--device", "cpu"]
    assert cli(*args).exit_code == 0
    (cache,) = folder.glob("features-dinov2-*.safetensors")
    rows = load_file(cache)["features"]
    assert torch.allclose(rows, _features(folder, models["dinov2"]), atol=1e-5)  # float32 batching
    with safe_open(str(cache), "pt") as handle:
        meta = handle.metadata()
    # Tampered rows with the same key: all alike, so a Vendi of 1 proves they were read, not recomputed
    save_file({"features": rows[:1].repeat(8, 1).contiguous()}, cache, metadata=meta)
    assert cli(*args, "--kernel", "cosine").exit_code == 0
    data = json.loads((folder / "metrics.json").read_text())
    assert data["overall"]["vendi"] == pytest.approx(1.0, abs=1e-6)
    # A changed image changes the key: a new file, computed from the images
    _save_png(folder / "img/000.png", np.random.default_rng(99))
    assert cli(*args).exit_code == 0
    (new_cache,) = folder.glob("features-dinov2-*.safetensors")  # it replaced the folder's older file
    assert new_cache != cache
    vendi = json.loads((folder / "metrics.json").read_text())["overall"]["vendi"]
    # float32 rows batched vs one by one
    assert vendi == pytest.approx(sparke.vendi(_features(folder, models["dinov2"]), sigma=0.8), rel=1e-4)
    assert vendi > 1.0 + 1e-3


def test_reference_as_a_saved_features_file(folders, models, tmp_path):
    args = ["evaluate", folders["generated"], "--features", models["dinov2"], "--device", "cpu"]
    out = tmp_path / "a.json"
    assert cli(*args, "--reference", folders["reference"], "--out", out).exit_code == 0
    ref_cache = next(
        f for f in tmp_path.glob("features-*.safetensors") if "reference" in _meta(f).get("folder", "")
    )
    out2 = tmp_path / "b.json"
    assert cli(*args, "--reference", ref_cache, "--out", out2).exit_code == 0
    first, second = json.loads(out.read_text())["overall"], json.loads(out2.read_text())["overall"]
    for key in ("precision", "recall", "density", "coverage", "frechet"):
        assert second[key] == first[key]
    # the file of another encoder is refused, naming it, before anything is written
    before = folder_state(tmp_path)
    out3 = tmp_path / "c.json"
    line = one_error_line(
        cli("evaluate", folders["generated"], "--device", "cpu", "--reference", ref_cache, "--out", out3)
    )
    assert str(ref_cache.name) in line and "not of --features embedded" in line
    assert folder_state(tmp_path) == before


def _meta(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as handle:
        return handle.metadata() or {}


def test_csv_metadata_and_prompt_column(models, tmp_path):
    folder = _image_folder(tmp_path / "csv", metadata="csv", column="caption")
    args = ["evaluate", folder, "--features", models["dinov2"], "--device", "cpu"]
    line = one_error_line(cli(*args))
    assert "metadata.csv" in line and "no 'prompt' column" in line and "--prompt-column" in line
    assert not (folder / "metrics.json").exists()
    result = cli(*args, "--prompt-column", "caption")
    assert result.exit_code == 0, result.output
    data = json.loads((folder / "metrics.json").read_text())
    assert data["overall"]["n_prompts"] == 2 and [c["cluster"] for c in data["clusters"]] == PROMPTS


def test_bad_folders_are_one_line_and_write_nothing(folders, models, tmp_path):
    args = ["--features", models["dinov2"], "--device", "cpu"]
    missing = _image_folder(tmp_path / "missing")
    with open(missing / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": "img/lost.png", "prompt": "a red circle"}) + "\n")
    unreadable = _image_folder(tmp_path / "unreadable")
    (unreadable / "img/003.png").write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (missing, ["metadata.jsonl", "row 9", "img/lost.png"]),
        (unreadable, ["img/003.png", "unreadable image"]),
        (empty, ["empty", "holds no images", "metadata.jsonl"]),
    ]
    for folder, words in cases:
        before = folder_state(folder)
        line = one_error_line(cli("evaluate", folder, *args, "--reference", folders["reference"]))
        for word in words:
            assert word in line, (word, line)
        assert folder_state(folder) == before
    # a good folder beside a bad one: refused before anything is written for either
    good = _image_folder(tmp_path / "good")
    before = folder_state(good)
    one_error_line(cli("evaluate", good, unreadable, *args))
    assert folder_state(good) == before
    line = one_error_line(cli("evaluate", good, missing, *args, "--out", tmp_path / "x.json"))
    assert "--out" in line and "one folder" in line
    small = _image_folder(tmp_path / "small", n=4)
    line = one_error_line(cli("evaluate", small, *args, "--reference", folders["reference"]))
    assert "needs more than 5 images" in line and "small" in line


def test_run_folder_with_reference_and_clip_in_the_report(folders, models, tmp_path):
    """A run folder evaluated with --reference and --clip: the report shows the new metrics beside the others."""
    from cli_helpers import fake_run

    run = fake_run(
        tmp_path / "run",
        method="none",
        scale=0.0,
        prompts=[("red", "a red circle"), ("blue", "a blue square")],
    )
    args = ["evaluate", run, "--features", models["dinov2"], "--device", "cpu", "--clip", models["clip"]]
    assert cli(*args, "--reference", folders["reference"]).exit_code == 0
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    assert {"precision", "recall", "density", "coverage", "frechet", "clip_score", "cond_vendi"} <= set(
        overall
    )
    page = tmp_path / "page.html"
    result = cli("report", run, "--out", page, "--no-evaluate")
    assert result.exit_code == 0, result.output
    html = page.read_text()
    for label in ("Recall", "Coverage", "Fréchet", "CLIPScore", "Cond-Vendi"):
        assert label in html, label


def test_report_reevaluates_a_stale_run_with_its_reference_and_clip(folders, models, tmp_path, monkeypatch):
    """A run evaluated with --reference and --clip, then resumed (one more image): the report evaluates it again
    with the same reference and CLIP model, from another working folder, so the metrics stay; a reference that
    is gone by then is named in a warning and only its metrics drop out."""
    import shutil

    from cli_helpers import fake_run, said
    from sparke.runs.evaluation import metrics_stale, read_metrics
    from test_cli_evaluate import _add_image

    run = fake_run(
        tmp_path / "run",
        method="none",
        scale=0.0,
        prompts=[("red", "a red circle"), ("blue", "a blue square")],
    )
    shutil.copytree(folders["reference"], tmp_path / "work" / "ref")
    monkeypatch.chdir(tmp_path / "work")  # a relative --reference, as typed
    args = ["evaluate", run, "--features", models["dinov2"], "--device", "cpu", "--clip", models["clip"]]
    assert cli(*args, "--reference", "ref").exit_code == 0
    before = read_metrics(run)
    _add_image(run, 8, prompt="a red circle", cluster="red")
    assert metrics_stale(run) == "made from 8 images, the run has 9 now"
    monkeypatch.chdir(tmp_path)
    result = cli("report", run, "--out", tmp_path / "page.html", "--device", "cpu")
    assert result.exit_code == 0, result.output
    after = read_metrics(run)
    assert after["n_images"] == 9 and metrics_stale(run) is None
    assert after["reference"] == before["reference"] and after["alignment"] == before["alignment"]
    assert {"precision", "recall", "density", "coverage", "frechet", "clip_score"} <= set(after["overall"])
    # the reference is gone: the report still evaluates, keeps CLIPScore and says what it lost
    shutil.rmtree(tmp_path / "work" / "ref")
    _add_image(run, 9, prompt="a blue square", cluster="blue")
    result = cli("report", run, "--out", tmp_path / "page.html", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "its reference cannot be used again" in said(result) and "no PRDC or Fréchet" in said(result)
    overall = read_metrics(run)["overall"]
    assert "clip_score" in overall and "frechet" not in overall and read_metrics(run)["reference"] is None
