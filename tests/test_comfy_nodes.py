"""The node pack's own logic, without the engine: bank file names, named banks, prompt and image features,
the score node's numbers, the strength default, and that ``import sparke`` never needs ComfyUI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparke
from sparke.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, banks
from sparke.comfy.features import conditioning_entries, image_rows, prompt_rows, repeat_to_batch
from sparke.comfy.nodes import SparkeDiversity, default_strength, diversity_scores

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def no_named_banks():
    banks.reset_all()
    yield
    banks.reset_all()


@pytest.mark.parametrize(
    "name, why",
    [
        ("../x.safetensors", "leaves the directory"),
        ("a/../../x.safetensors", "leaves the directory"),
        ("a\\..\\..\\x.safetensors", "leaves the directory"),
        ("/etc/x.safetensors", "absolute path"),
        ("C:\\x.safetensors", "absolute path"),
        ("C:x.safetensors", "absolute path"),
        ("bank.pt", "must be a .safetensors file"),
        ("bank.pkl", "must be a .safetensors file"),
        ("  ", "empty"),
    ],
)
def test_bank_file_names_stay_inside_the_directory(tmp_path, name, why):
    with pytest.raises(ValueError, match=why) as caught:
        banks.bank_file(name, tmp_path)
    assert "\n" not in str(caught.value)


def test_bank_file_accepts_a_relative_name_and_refuses_a_link_out(tmp_path):
    root = tmp_path / "user"
    root.mkdir()
    assert banks.bank_file("sparke/a.safetensors", root) == root.resolve() / "sparke" / "a.safetensors"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="resolves outside"):
        banks.bank_file("link/a.safetensors", root)


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_named_banks_keep_load_and_reset(tmp_path):
    made = sparke.Bank()
    made.add(_rows(3, 8, 0), _rows(3, 4, 1))
    file = tmp_path / "made.safetensors"
    made.save(file)
    first = banks.named_bank("a", path=file)  # first use of the name, the file exists: loaded
    assert len(first.bank) == 3
    first.bank.add(_rows(1, 8, 2), _rows(1, 4, 3))
    again = banks.named_bank("a", path=file, action="keep")
    assert again is first and len(again.bank) == 4  # lives across runs, not read again
    assert len(banks.named_bank("a", path=file, action="load").bank) == 3
    reset = banks.named_bank("a", path=file, action="reset")
    assert reset is first and len(reset.bank) == 0
    assert len(banks.named_bank("b").bank) == 0  # another name, another bank
    reset.bank.add(_rows(2, 8, 4), _rows(2, 4, 5))
    reset.save_after_run = True
    reset.after_run()
    back = sparke.AutoBank.load(file)
    torch.testing.assert_close(back.x, reset.bank.x, rtol=0, atol=0)


def test_named_bank_errors_are_one_line(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for call, match in [
        (lambda: banks.named_bank("a", path=tmp_path / "none.safetensors", action="load"), "no bank file"),
        (lambda: banks.named_bank("a", path=junk, action="load"), "SPARKE Bank: "),
        (lambda: banks.named_bank("a", action="load"), "needs a file name"),
        (lambda: banks.named_bank("a", action="wipe"), "keep, load or reset"),
        (lambda: banks.named_bank(""), "name is empty"),
    ]:
        with pytest.raises(ValueError, match=match) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_prompt_rows_pooled_else_mean_tokens_cycled_and_unit():
    tokens = torch.randn(2, 5, 6)
    pooled = torch.randn(2, 3)
    y = prompt_rows(conditioning_entries([[tokens, {"pooled_output": pooled}]]), 5)
    torch.testing.assert_close(y, F.normalize(pooled[[0, 1, 0, 1, 0]], dim=1), rtol=0, atol=1e-7)
    y = prompt_rows(conditioning_entries([[tokens, {}]]), 2)
    torch.testing.assert_close(y, F.normalize(tokens.mean(1), dim=1), rtol=0, atol=1e-7)
    other = torch.randn(1, 5, 6)
    y = prompt_rows(conditioning_entries([[tokens[:1], {}], [other, {}]]), 1)  # combined: averaged
    torch.testing.assert_close(y, F.normalize((tokens[0].mean(0) + other[0].mean(0))[None] / 2, dim=1))
    assert repeat_to_batch(torch.arange(3.0)[:, None], 2).flatten().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="no pooled output"):
        prompt_rows([{"foo": 1}], 2)


def test_image_rows_without_an_encoder_are_layout_not_colour():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 64, 48, 3, generator=gen)
    x = image_rows(images)
    assert x.shape == (3, 3 * 32 * 32)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(3))
    brighter = (images + 0.2).clamp(max=10)  # the same layout, a different overall colour
    torch.testing.assert_close(image_rows(brighter), x, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected an IMAGE batch"):
        image_rows(torch.rand(3, 64, 64))


def test_scores_are_the_librarys():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(4, 32, 32, 3, generator=gen)
    tokens = torch.randn(2, 7, 6, generator=gen)
    text, vendi, cond_vendi, similarity = diversity_scores(images, [[tokens, {}]])
    x = image_rows(images)
    y = F.normalize(tokens.mean(1), dim=1)[[0, 1, 0, 1]]
    assert vendi == sparke.vendi(x)
    assert cond_vendi == sparke.cond_vendi(x, y)
    assert similarity == sparke.in_batch_similarity(x)
    assert 1.0 <= vendi <= 4.0
    assert text.startswith("4 images (colour grid features): Vendi ")
    _, vendi_alone, cond_alone, _ = diversity_scores(images)
    assert vendi_alone == vendi
    assert cond_alone == pytest.approx(vendi, rel=1e-6)  # one shared prompt: Cond-Vendi is Vendi (float64)


def test_strength_default_is_the_librarys_scale_and_the_mappings_match():
    assert default_strength() == inspect.signature(sparke.SPARKE).parameters["scale"].default
    spec = SparkeDiversity.INPUT_TYPES()["required"]["strength"][1]
    assert spec["default"] == default_strength()
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    first, second = SparkeDiversity.IS_CHANGED(), SparkeDiversity.IS_CHANGED()
    assert first is not second and first != second  # ComfyUI's cache never matches it: every run re-runs


def test_diversity_node_refuses_bad_inputs_in_one_line():
    node = SparkeDiversity()
    for args, match in [
        ((None, 0.05, 0.6, 0.4), "after end_percent"),
        ((None, 0.05, -0.1, 0.4), "start_percent must be a fraction"),
        ((None, -1.0, 0.0, 1.0), "strength must be a number >= 0"),
        ((None, 0.05, 0.0, 1.0, "bank.safetensors"), "must come from a SPARKE Bank node"),
    ]:
        with pytest.raises(ValueError, match=match) as caught:
            node.patch(*args)
        assert "\n" not in str(caught.value)


BLOCKED = ("comfy", "folder_paths", "nodes", "torchsde", "einops", "aiohttp", "av", "kornia", "diffusers",
           "transformers", "torchvision")  # fmt: skip


def test_import_sparke_needs_no_comfyui():
    # each blocked name set to None in sys.modules: importing it raises ImportError, as if not installed
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); "
        "import sparke; assert 'sparke.comfy' not in sys.modules; sparke.SPARKE(); "
        "import sparke.comfy; from sparke.comfy.nodes import SparkeDiversity; "
        "assert SparkeDiversity.INPUT_TYPES()['required']['strength'][1]['default'] == "
        f"{inspect.signature(sparke.SPARKE).parameters['scale'].default!r}"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
