"""ShapesPipeline: SD-like call, save/load round trip, scheduler swaps, callbacks, shipped weights."""

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from sparke.embedded.pipeline import (
    TINY_UNET_CONFIG,
    WEIGHTS_DIR,
    ShapesPipeline,
    build_scheduler,
    build_unet,
)


@pytest.fixture(scope="module")
def tiny_pipe():
    torch.manual_seed(0)
    pipe = ShapesPipeline(unet=build_unet(TINY_UNET_CONFIG).eval(), scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=-1)


def _run(pipe, **kw):
    args = dict(
        prompt_embeds=_embeds(2),
        negative_prompt_embeds=_embeds(1, 1),
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    args.update(kw)
    out = pipe(**args)
    return out if isinstance(out, tuple) else out.images


def test_output_types(tiny_pipe):
    pt = _run(tiny_pipe, num_images_per_prompt=2)
    assert pt.shape == (4, 3, 32, 32) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    npy = _run(tiny_pipe, output_type="np")
    assert npy.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(npy, _run(tiny_pipe).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    lat = _run(tiny_pipe, output_type="latent")
    assert torch.allclose((lat / 2 + 0.5).clamp(0, 1), _run(tiny_pipe))
    pil = _run(tiny_pipe, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (32, 32)
    assert tiny_pipe.vae is None
    assert isinstance(_run(tiny_pipe, return_dict=False), tuple)


def test_prompt_embeddings_do_not_depend_on_the_batch_and_are_cached(tiny_pipe, monkeypatch):
    import sparke.embedded.pipeline as module
    import sparke.encoders.minilm as minilm

    long = "two small blue squares on a black background, seen from above"
    together = tiny_pipe.encode_prompt_features(["a red circle", long])
    fresh = ShapesPipeline(unet=tiny_pipe.unet, scheduler=build_scheduler())
    assert torch.equal(fresh.encode_prompt_features("a red circle")[0], together[0])
    torch.testing.assert_close(together, minilm.encode_minilm(["a red circle", long]), atol=1e-5, rtol=0)
    calls = []
    original = minilm.encode_minilm
    monkeypatch.setattr(minilm, "encode_minilm", lambda p, **kw: calls.append(p) or original(p, **kw))
    monkeypatch.setattr(module, "PROMPT_CACHE_SIZE", 2)
    fresh.encode_prompt_features(["a red circle", "a blue square", "a red circle"])
    assert calls == [["a blue square"]]
    fresh.encode_prompt_features(["a green star"])  # evicts the least recently used, "a red circle"
    fresh.encode_prompt_features(["a blue square", "a red circle"])
    assert calls == [["a blue square"], ["a green star"], ["a red circle"]]
    many = fresh.encode_prompt_features(["one", "two", "three", "one"])  # more prompts than the cache holds
    assert many.shape == (4, 384) and torch.equal(many[0], many[3]) and len(fresh._prompt_cache) == 2


def test_text_prompts_and_encode_prompt(tiny_pipe):
    e = tiny_pipe.encode_prompt(["a red circle", "a crimson disc", "two blue squares"])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(
        e, tiny_pipe.encode_prompt_features(["a red circle", "a crimson disc", "two blue squares"])
    )
    g = torch.Generator().manual_seed(3)
    a = tiny_pipe("a red circle", num_inference_steps=3, generator=g, output_type="pt").images
    b = tiny_pipe(
        prompt_embeds=tiny_pipe.encode_prompt("a red circle"),
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    assert torch.allclose(a, b, atol=1e-6)


def test_save_pretrained_round_trip(tiny_pipe, tmp_path):
    before = _run(tiny_pipe)
    tiny_pipe.save_pretrained(tmp_path)
    loaded = ShapesPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    torch.testing.assert_close(_run(loaded), before)


@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_scheduler_swap(tiny_pipe, cls):
    pipe = ShapesPipeline(unet=tiny_pipe.unet, scheduler=cls.from_config(tiny_pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = _run(pipe, num_inference_steps=5)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_step_and_callback_are_called_like_stable_diffusion(tiny_pipe):
    calls = []
    real_step = tiny_pipe.scheduler.step

    def step(*args, **kwargs):
        calls.append(("step", args[1]))
        return real_step(*args, **kwargs)

    def cb(pipe, i, t, kw):
        calls.append(("cb", i))
        assert set(kw) == {"latents"} and kw["latents"].shape == (2, 3, 32, 32)
        return {"latents": kw["latents"] * 0 if i == 3 else kw["latents"]}

    tiny_pipe.scheduler.step = step
    try:
        out = _run(
            tiny_pipe,
            callback_on_step_end=cb,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent",
        )
    finally:
        del tiny_pipe.scheduler.step
    assert [c[0] for c in calls] == ["step", "cb"] * 4
    assert float(out.abs().max()) == 0.0  # the callback's latents replaced the pipeline's
    assert "eta" not in tiny_pipe.prepare_extra_step_kwargs(None, 0.0)  # DPM-Solver's step has no eta
    assert "eta" in inspect.signature(DDIMScheduler.step).parameters


def test_cfg_uses_negative_embeddings(tiny_pipe):
    a = _run(tiny_pipe, guidance_scale=4.0)
    b = _run(tiny_pipe, guidance_scale=4.0, negative_prompt_embeds=_embeds(1, 2))
    c = _run(tiny_pipe, guidance_scale=1.0)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.skipif(not (WEIGHTS_DIR / "unet.safetensors").exists(), reason="shipped weights not built")
def test_shipped_pipeline_follows_prompts():
    from sparke.embedded import load_pipeline
    from sparke.embedded.checker import check, matches

    pipe = load_pipeline()
    prompts = ["a red circle", "a blue square", "a picture of a yellow triangle", "a green disc"]
    req = [("circle", "red"), ("square", "blue"), ("triangle", "yellow"), ("circle", "green")]
    out = pipe(
        prompts,
        num_images_per_prompt=2,
        num_inference_steps=10,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    imgs = (out * 255).round().astype(np.uint8)
    ok = [
        matches(check(im), {"shape": s, "colour": c})
        for im, (s, c) in zip(imgs, np.repeat(req, 2, 0), strict=True)
    ]
    assert np.mean(ok) >= 0.6, ok
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert size <= 20 * 2**20
