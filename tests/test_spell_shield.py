"""SPELL shields from images (issue 30): ``SpellGuidance.encode_images`` and ``sparke shield`` turn a folder of
images, a run folder or a none run's bank into a shield that makes ``--method spell`` move images near it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cli_helpers import cli, one_error_line
from sparke.core import Bank
from sparke.guidance import attach
from sparke.guidance.spaces import encode_to_latents
from sparke.methods.spell import SpellGuidance, load_shield
from tiny_pipelines import build, call_kwargs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_encode_images_gives_the_vae_latents_of_the_pipeline():
    pipe = build("sd")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 64, generator=gen) * 2 - 1
    bank = SpellGuidance.encode_images(pipe, images, batch_size=2)
    want = encode_to_latents(pipe, images).flatten(1).float()
    torch.testing.assert_close(bank.x, want, rtol=1e-5, atol=1e-5)  # two batches vs one: float32 convolutions
    assert bank.metadata["space"] == "x0-raw" and len(bank) == 3
    as_uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    pil = [__import__("PIL.Image").Image.fromarray(a.permute(1, 2, 0).numpy()) for a in as_uint8]
    torch.testing.assert_close(
        SpellGuidance.encode_images(pipe, pil).x, SpellGuidance.encode_images(pipe, as_uint8).x
    )


def test_a_shield_encoded_from_images_pushes_their_twins_away(tmp_path):
    """The images of a vanilla call, decoded and encoded back, shield a second call with the same seed: every
    image moves away from its own twin (without the shield, and without batch repellency, nothing moves)."""
    pipe = build("sd")

    def kw():  # a fresh generator each call: the same noise
        return call_kwargs(pipe, ["a photo of a cat", "a red car"], num_images_per_prompt=2, steps=4, seed=0)

    with attach(pipe) as run:
        pipe(**kw())
    vanilla = run.final_latents[:4].float()
    from sparke.guidance.spaces import decode

    pixels = decode(pipe, vanilla).clamp(-1, 1)
    shield = SpellGuidance.encode_images(pipe, pixels)
    shield.save(tmp_path / "shield.safetensors")
    alone = SpellGuidance(scale=10.0, batch=False)
    with attach(pipe) as run:
        alone(pipe, **kw())
    assert torch.equal(run.final_latents[:4].float(), vanilla)
    shielded = SpellGuidance(scale=10.0, batch=False, shield=str(tmp_path / "shield.safetensors"))
    with attach(pipe) as run:
        shielded(pipe, **kw())
    out = run.final_latents[:4].float()
    assert shielded.pushed > 0
    before = (vanilla.flatten(1) - shield.x).norm(dim=1)
    after = (out.flatten(1) - shield.x).norm(dim=1)
    assert (after > before).all()


def test_load_shield_names_the_way_to_a_shield_from_a_none_bank(tmp_path):
    unit = Bank()
    unit.add(torch.nn.functional.normalize(torch.randn(4, 8), dim=1))
    unit.save(tmp_path / "unit.safetensors")
    with pytest.raises(ValueError, match=r"sparke shield RUN_OR_IMAGE_FOLDER --model"):
        load_shield(tmp_path / "unit.safetensors")
    assert hasattr(SpellGuidance, "encode_images")  # the API the message names exists


@pytest.mark.slow
def test_cli_shields_from_a_folder_and_from_a_none_runs_bank_move_the_images(tmp_path):
    from PIL import Image

    def generate(method, out, *extra):
        result = cli("generate", "-p", "a red circle", "-p", "a blue square", "-n", 2, "--steps", 4,
                     "--method", method, *extra, "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        return [np.asarray(Image.open(p)).astype(int) for p in sorted((out / "images").glob("*.png"))]

    none = generate("none", tmp_path / "none")
    folder = tmp_path / "protected"
    shutil.copytree(tmp_path / "none" / "images", folder)  # a plain folder of images, no metadata
    shields = {}
    for name, source in (("folder", folder), ("bank", tmp_path / "none" / "bank.safetensors")):
        shields[name] = tmp_path / f"{name}.safetensors"
        result = cli("shield", source, "--model", "embedded", "--out", shields[name])
        assert result.exit_code == 0, result.output
    assert torch.equal(Bank.load(shields["folder"]).x, Bank.load(shields["bank"]).x)
    plain = generate("spell", tmp_path / "plain", "--scale", 0.5, "--set", "batch=false")
    assert all(np.array_equal(a, b) for a, b in zip(plain, none, strict=True))  # nothing to push from
    for name, shield in shields.items():
        moved = generate("spell", tmp_path / f"shielded-{name}", "--scale", 0.5, "--set", "batch=false",
                         "--shield", shield)  # fmt: skip
        distances = [np.abs(a - b).mean() for a, b in zip(moved, none, strict=True)]
        assert min(distances) > 1.0, (name, distances)  # every image left its protected twin's ball


def test_cli_shield_errors_name_what_exists(tmp_path):
    line = one_error_line(cli("shield", tmp_path / "nowhere", "--out", tmp_path / "s.safetensors"))
    assert line.endswith("nowhere: no such folder or bank file")
    bank = Bank()
    bank.add(torch.ones(2, 4))
    bank.save(tmp_path / "loose.safetensors")
    line = one_error_line(cli("shield", tmp_path / "loose.safetensors", "--out", tmp_path / "s.safetensors"))
    assert "a bank file outside a run folder" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(cli("shield", tmp_path / "empty", "--out", tmp_path / "s.safetensors"))
    assert "no images" in line
