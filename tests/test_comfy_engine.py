"""The node pack inside the real ComfyUI engine (its detection, loader, model patcher and samplers), on tiny
random-weight models that ComfyUI detects as SD1.5, SDXL (Segmind_Vega) and SD3 (a flow model).

Sampling runs as ComfyUI's executor runs it: ``nodes.common_ksampler`` under ``torch.inference_mode()``, 8 x 8
latents, 3 steps. Skips with the reason where no ComfyUI source folder is found (``comfy_harness``).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import sys

import pytest
import torch

import comfy_harness
import comfy_models

pytestmark = pytest.mark.skipif(comfy_harness.comfyui_path() is None, reason=comfy_harness.SKIP_REASON)

FAMILIES = list(comfy_models.FAMILIES)
STEPS = (
    3  # ComfyUI's "normal" 2-step SD3 schedule (sigma 1, then 0.009) has no step inside every="span"'s band
)
_MODELS: dict[str, object] = {}


@pytest.fixture(scope="module")
def engine(torch_one_thread):
    yield comfy_harness.import_engine(comfy_harness.comfyui_path())
    _MODELS.clear()  # freed now: a ModelPatcher collected at interpreter exit logs an error from its __del__
    gc.collect()


@pytest.fixture(scope="module")
def pack(engine):
    from sparke.comfy import nodes as pack_nodes

    return pack_nodes


@pytest.fixture
def user_dir(engine, tmp_path):
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_user_directory(old)


def model_of(family: str):
    if family not in _MODELS:
        _MODELS[family] = comfy_models.load(family)
    return _MODELS[family]


def sample(engine, model, family, *, sampler="euler", cfg=5.0, batch=2, seed=0) -> torch.Tensor:
    """LATENT samples (batch, C, 8, 8) of ``model`` for fixed prompts, as the executor runs a KSampler."""
    pos, neg = comfy_models.conditioning(family, seed=1), comfy_models.conditioning(family, seed=2)
    latent = comfy_models.empty_latent(family, batch)
    with torch.inference_mode():
        (out,) = engine.common_ksampler(model, seed, STEPS, cfg, sampler, "normal", pos, neg, latent)
    return out["samples"]


def patched(pack, model, strength=None, bank=None):
    strength = pack.default_strength() if strength is None else strength
    return pack.SparkeDiversity().patch(model, strength, 0.0, 1.0, bank)[0]


def fresh_bank(pack, name, **kwargs):
    defaults = dict(action="reset", file="", directory="user", save_after_run=False)
    return pack.SparkeBank().bank(name, **{**defaults, **kwargs})[0]


def post_cfg(model) -> list:
    return list(model.model_options.get("sampler_post_cfg_function", []))


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_the_unpatched_model_and_the_original_is_untouched(engine, pack, family):
    model = model_of(family)
    options_before = copy.deepcopy(model.model_options)
    plain = sample(engine, model, family)
    bank = fresh_bank(pack, f"zero {family}")
    assert torch.equal(sample(engine, patched(pack, model, 0.0, bank), family), plain)
    assert len(bank.bank) == 2  # at strength 0 the bank still records the images
    guided = sample(engine, patched(pack, model, None, bank), family)
    assert not torch.equal(guided, plain)
    # the original MODEL: same options, no patch of ours, and it still samples exactly as before
    assert post_cfg(model) == options_before.get("sampler_post_cfg_function", [])
    assert model.model_options.keys() == options_before.keys()
    assert torch.equal(sample(engine, model, family), plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_second_run_differs_and_the_bank_records_every_image(engine, pack, family):
    from sparke.comfy.features import conditioning_entries, prompt_rows
    from sparke.guidance import SPARKE

    model = model_of(family)
    bank = fresh_bank(pack, f"twice {family}")
    diverse = patched(pack, model, None, bank)
    first = sample(engine, diverse, family)
    assert len(bank.bank) == 2
    second = sample(engine, diverse, family)  # the same seed: only the bank changed
    assert len(bank.bank) == 4
    assert torch.isfinite(second).all() and not torch.equal(first, second)
    # the rows are the guide's features of the finished latents in the model's latent space, with the prompts'
    reference = SPARKE(bank="exact")
    latents = model.model.process_latent_in(torch.cat([first, second]))
    y = prompt_rows(conditioning_entries(comfy_models.conditioning(family, seed=1)), 4)
    reference.add_to_bank(latents, y)
    # process_latent_out then _in round-trips the scale factor in float32: a few ulps on unit rows
    torch.testing.assert_close(bank.bank.x, reference.bank.x, rtol=0, atol=1e-5)
    torch.testing.assert_close(bank.bank.y, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "uni_pc"])
@pytest.mark.parametrize("family", FAMILIES)
def test_samplers(engine, pack, family, sampler):
    model = model_of(family)
    bank = fresh_bank(pack, f"{sampler} {family}")
    diverse = patched(pack, model, None, bank)
    guided = sample(engine, diverse, family, sampler=sampler)
    plain = sample(engine, model, family, sampler=sampler)
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, plain)
    assert len(bank.bank) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_one_shortcut_and_an_earlier_patch_is_chained(engine, pack, family):
    model = model_of(family)
    seen: list[bool] = []

    def halve(args):  # an earlier post-CFG patch (as another node pack would add): recorded and kept
        seen.append(args["uncond"] is None)
        return args["denoised"] * 0.5

    earlier = model.clone()
    earlier.set_model_sampler_post_cfg_function(halve)
    alone = sample(engine, earlier, family, cfg=1.0)
    assert seen and all(seen)  # cfg 1: ComfyUI skipped the unconditional pass
    with_zero = sample(engine, patched(pack, earlier, 0.0), family, cfg=1.0)
    assert torch.equal(with_zero, alone)  # the earlier patch still runs, and ours adds nothing at 0
    seen.clear()
    diverse = patched(pack, earlier)
    assert post_cfg(diverse)[0] is halve and len(post_cfg(diverse)) == 2
    guided = sample(engine, diverse, family, cfg=1.0)
    assert seen and all(seen)  # our patch keeps the cfg-1 shortcut
    assert torch.isfinite(guided).all() and not torch.equal(guided, alone)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_four_with_bank_files_both_ways(engine, pack, family, user_dir):
    import sparke

    model = model_of(family)
    fam = comfy_models.FAMILIES[family]
    dim_x = fam.channels * 8 * 8
    dim_y = fam.pooled or fam.context[1]
    made = sparke.Bank()
    gen = torch.Generator().manual_seed(3)
    made.add(torch.nn.functional.normalize(torch.randn(3, dim_x, generator=gen), dim=1),
             torch.nn.functional.normalize(torch.randn(3, dim_y, generator=gen), dim=1))  # fmt: skip
    (user_dir / "sparke").mkdir()
    made.save(user_dir / "sparke" / "made.safetensors")
    bank = fresh_bank(
        pack, f"files {family}", action="load", file="sparke/made.safetensors", save_after_run=True
    )
    assert len(bank.bank) == 3
    torch.testing.assert_close(bank.bank.x, made.x, rtol=0, atol=0)
    out = sample(engine, patched(pack, model, None, bank), family, batch=4)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    assert len(bank.bank) == 7
    again = sparke.AutoBank.load(
        user_dir / "sparke" / "made.safetensors"
    )  # written by the node after the run
    assert len(again) == 7
    torch.testing.assert_close(again.x, bank.bank.x, rtol=0, atol=0)
    torch.testing.assert_close(again.y, bank.bank.y, rtol=0, atol=0)


def test_a_bank_of_other_dimensions_fails_with_one_line(engine, pack, user_dir):
    import sparke

    wrong = sparke.Bank()
    wrong.add(torch.nn.functional.normalize(torch.randn(2, 5), dim=1), torch.ones(2, 3) / 3**0.5)
    wrong.save(user_dir / "wrong.safetensors")
    bank = fresh_bank(pack, "wrong dims", action="load", file="wrong.safetensors")
    with pytest.raises(ValueError) as caught:
        sample(engine, patched(pack, model_of("sd3"), None, bank), "sd3")
    message = str(caught.value)
    assert message.startswith("SPARKE Diversity: ") and "\n" not in message
    assert "bank" in message


def test_the_pack_loads_through_comfyuis_own_loader(engine):
    before = set(engine.NODE_CLASS_MAPPINGS)
    loaded = asyncio.run(engine.load_custom_node(str(comfy_harness.REPO), module_parent="custom_nodes"))
    assert loaded
    added = set(engine.NODE_CLASS_MAPPINGS) - before
    assert {"SparkeDiversity", "SparkeBank", "SparkeDiversityScore"} <= added | before
    assert engine.NODE_DISPLAY_NAME_MAPPINGS["SparkeDiversity"] == "SPARKE Diversity"
    node = engine.NODE_CLASS_MAPPINGS["SparkeDiversity"]
    assert node.RELATIVE_PYTHON_MODULE == f"custom_nodes.{comfy_harness.REPO.name}"
    assert (
        sys.modules[str(comfy_harness.REPO).replace(".", "_x_")].NODE_CLASS_MAPPINGS["SparkeDiversity"]
        is node
    )


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_span_guides_the_steps_its_factors_name_on_the_samplers_sigmas(engine, pack, family):
    """``every="span"`` in ComfyUI reads the sampler's whole schedule: the steps guided are those whose factor
    (``span_factors`` of the sigmas' log signal-to-noise ratios) is above 0, each moved by its factor."""
    import comfy.samplers

    from sparke.comfy.patch import SparkePatch, log_snr_of_sigma
    from sparke.guidance import SPARKE
    from sparke.guidance.schedule import span_factors

    model = model_of(family)
    steps = 6
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    ms = model.get_model_object("model_sampling")
    factors = span_factors([log_snr_of_sigma(ms, float(s)) for s in sigmas[:-1]])
    expected = sum(f > 0 for f in factors)
    assert 0 < expected < steps  # low-noise steps past the band (and SD3's first, sigma 1) are left alone
    bank = fresh_bank(pack, f"span {family}")
    guide = SPARKE(every="span", bank=bank.bank)
    factors_used = []  # each guided call's step factor, as the node passes it
    step_latents = guide.step_latents
    guide.step_latents = lambda z, x0_of, y, host: (
        factors_used.append(host.step_factor) or step_latents(z, x0_of, y, host)
    )
    patch = SparkePatch(guide, bank, 0.0, 1.0)
    diverse = patch.apply(model)
    pos, neg = comfy_models.conditioning(family, seed=1), comfy_models.conditioning(family, seed=2)
    with torch.inference_mode():
        for seed in (0, 1):
            latent = comfy_models.empty_latent(family, 2)
            engine.common_ksampler(diverse, seed, steps, 5.0, "euler", "normal", pos, neg, latent)
    assert patch.guided_steps == 2 * expected
    assert factors_used == 2 * [f for f in factors if f > 0]
