"""Schedulers and feature spaces: guidance once per denoising step, x0 estimates, image-encoder space."""

from __future__ import annotations

import pytest
import torch

from sparke.guidance import SPARKE, Update, attach
from sparke.guidance.spaces import x0_estimate
from tiny_pipelines import call_kwargs, final_latents, pipeline_state, same_state, tiny_sd, tiny_sd3

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("torch_one_thread")]


SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _scheduler(name: str, **extra):
    import diffusers

    table = {
        "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
        "euler": ("EulerDiscreteScheduler", dict(steps_offset=1)),
        "euler_a": ("EulerAncestralDiscreteScheduler", dict(steps_offset=1)),
        "dpmpp": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
        "heun": ("HeunDiscreteScheduler", {}),
    }
    cls, kw = table[name]
    return getattr(diffusers, cls)(**SD_BETAS, **kw, **extra)


SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp", "heun")
STEPS = 4


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_matrix_on_sd(sd, name):
    sd.scheduler = _scheduler(name)
    kw = dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, steps=STEPS)
    vanilla = final_latents(sd(**call_kwargs(sd, **kw)))
    before = pipeline_state(sd)  # as the vanilla call left it; each guided call must restore it
    zero = SPARKE(scale=0.0)
    assert torch.equal(final_latents(zero(sd, **call_kwargs(sd, **kw))), vanilla)
    guide = SPARKE(scale=0.2, every=1)
    guided = final_latents(guide(sd, **call_kwargs(sd, **kw)))
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, vanilla)
    # guided once per denoising step, whatever the number of step() calls (Heun: 2 * STEPS - 1)
    assert guide.stats.steps == STEPS
    assert guide.stats.guided == STEPS
    assert guide.stats.step_calls == (2 * STEPS - 1 if name == "heun" else STEPS)
    assert len(guide.bank) == 4
    assert same_state(pipeline_state(sd), before)


def test_every_and_window_select_steps(sd):
    sd.scheduler = _scheduler("ddim")
    seen = []
    guide = SPARKE(scale=0.1, every=2, window=(0.3, 1.0))
    original = guide.on_step

    def spy(step):
        seen.append((step.index, round(step.fraction, 3)))
        return original(step)

    guide.on_step = spy
    guide(sd, **call_kwargs(sd, steps=7))
    assert [i for i, _ in seen] == list(range(7))
    assert [f for _, f in seen][0] == 0.0 and [f for _, f in seen][-1] == 1.0
    # every=2 -> 0, 2, 4, 6; window starts at 0.3 -> 2 (0.333), 4, 6
    assert guide.stats.guided == 3


def test_raw_step_moves_less_than_relative(sd):
    sd.scheduler = _scheduler("ddim")
    vanilla = final_latents(sd(**call_kwargs(sd)))
    rel = final_latents(SPARKE(scale=0.1, every=1)(sd, **call_kwargs(sd)))
    raw = final_latents(SPARKE(scale=0.1, every=1, update=Update(step="raw"))(sd, **call_kwargs(sd)))
    assert not torch.equal(raw, vanilla)
    # raw steps are scale * gradient (small on unit features); relative ones scale with |z|
    assert (raw - vanilla).norm() < (rel - vanilla).norm()


# -- x0 estimates ----------------------------------------------------------------------------------------------


def _x0_from_step(scheduler, sample, out, t):
    return scheduler.step(out, t, sample).pred_original_sample


@pytest.mark.parametrize(
    "name, prediction_type",
    [(n, p) for n in ("ddim", "euler", "euler_a") for p in ("epsilon", "v_prediction", "sample")][
        :-1
    ],  # Euler ancestral does not implement "sample"
)
def test_x0_estimate_matches_scheduler(name, prediction_type):
    sched = _scheduler(name, prediction_type=prediction_type)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=g) * float(sched.init_noise_sigma)
    out = torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[1]
    if hasattr(sched, "_init_step_index"):
        sched._init_step_index(t)
    mine = x0_estimate(sched, sample, out, t)
    theirs = _x0_from_step(sched, sample, out, t)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_x0_estimate_dpm_and_flow():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    # DPM-Solver++ (VP): x_t = alpha x0 + sigma eps
    dpm = _scheduler("dpmpp")
    dpm.set_timesteps(5)
    i = 2
    alpha, sigma = dpm._sigma_to_alpha_sigma_t(dpm.sigmas[i])
    dpm._step_index = i
    xt = alpha * x0 + sigma * noise
    torch.testing.assert_close(x0_estimate(dpm, xt, noise, dpm.timesteps[i]), x0, rtol=1e-4, atol=1e-4)
    # flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(5)
    s = flow.sigmas[i]
    flow._step_index = i
    xt = (1 - s) * x0 + s * noise
    torch.testing.assert_close(x0_estimate(flow, xt, noise - x0, flow.timesteps[i]), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_space_on_sd(sd, prediction_type):
    sd.scheduler = _scheduler("ddim", prediction_type=prediction_type)
    vanilla = final_latents(sd(**call_kwargs(sd)))
    guide = SPARKE(scale=0.2, every=1, space="x0")
    out = final_latents(guide(sd, **call_kwargs(sd)))
    assert torch.isfinite(out).all() and not torch.equal(out, vanilla)
    assert guide.stats.guided == 3 and len(guide.bank) == 2


def test_x0_space_flow_matching_sd3():
    pipe = tiny_sd3()
    vanilla = final_latents(pipe(**call_kwargs(pipe)))
    guide = SPARKE(scale=0.2, every=1, space="x0")
    out = final_latents(guide(pipe, **call_kwargs(pipe)))
    assert torch.isfinite(out).all() and not torch.equal(out, vanilla)
    assert guide.stats.guided == 3


class TinyImageEncoder(torch.nn.Module):
    """A differentiable stand-in for CLIP/DINOv2: images (B, 3, H, W) -> (B, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, images):
        h = torch.nn.functional.silu(self.conv(images)).mean((2, 3))
        return self.head(h)


def test_image_encoder_space_backprops_through_vae_and_encoder(sd):
    sd.scheduler = _scheduler("ddim")
    encoder = TinyImageEncoder().eval()
    seen = []

    def encode(images):
        seen.append((tuple(images.shape), images.requires_grad))
        return encoder(images)

    vanilla = final_latents(sd(**call_kwargs(sd)))
    guide = SPARKE(scale=0.2, every=1, space=encode)
    out = final_latents(guide(sd, **call_kwargs(sd)))
    assert not torch.equal(out, vanilla)
    assert guide.bank.dim_x == 16 and len(guide.bank) == 2
    # 3 guided steps with gradients through the decoder, then one no-grad pass for the bank rows
    assert [g for _, g in seen] == [True, True, True, False]
    assert seen[0][0] == (2, 3, 32, 32)
    assert all(p.grad is None for p in sd.vae.parameters())
    assert all(p.grad is None for p in encoder.parameters())


def test_x0_space_on_heun_guides_once_per_step(sd):
    sd.scheduler = _scheduler("heun")
    guide = SPARKE(scale=0.2, every=1, space="x0")
    guide(sd, **call_kwargs(sd, steps=3))
    assert guide.stats.guided == 3 and guide.stats.step_calls == 5


def test_attach_records_and_composes(sd):
    sd.scheduler = _scheduler("ddim")
    order = []

    def outer(step):
        order.append(("outer", step.index))

    def inner(step):
        order.append(("inner", step.index))

    with attach(sd, outer) as a, attach(sd, inner) as b:
        sd(**call_kwargs(sd, steps=2))
    assert order == [("inner", 0), ("outer", 0), ("inner", 1), ("outer", 1)]
    assert torch.equal(a.final_latents, b.final_latents)
    assert "step" not in vars(sd.scheduler)


def test_flux_packed_latents_x0_and_image_encoder_spaces():
    from tiny_pipelines import tiny_flux

    pipe = tiny_flux()
    vanilla = final_latents(pipe(**call_kwargs(pipe)))
    for space in ("x0", TinyImageEncoder().eval()):
        guide = SPARKE(scale=0.3, every=1, space=space)
        out = final_latents(guide(pipe, **call_kwargs(pipe)))
        assert out.shape == vanilla.shape == (2, 64, 4)  # packed (B, seq, C * 4)
        assert torch.isfinite(out).all() and not torch.equal(out, vanilla)
        # reference images encode into the same space and size as the bank rows
        ref = guide.encode_images(pipe, torch.rand(2, 3, 16, 16))
        assert ref.dim_x == guide.bank.dim_x


def test_decode_and_encode_follow_the_vae_config_like_sdxl():
    """latents_mean/std and scaling_factor as StableDiffusionXLPipeline applies them; an fp16 VAE with
    force_upcast runs in float32 for the call and is fp16 again after."""
    from sparke.guidance.spaces import decode, encode_to_latents
    from tiny_pipelines import build

    pipe = build("sdxl")
    vae = pipe.vae
    channels = vae.config.latent_channels
    mean, std = [0.1 * c for c in range(channels)], [0.5 + 0.25 * c for c in range(channels)]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    scale = vae.config.scaling_factor
    latents = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = vae.decode(latents * s / scale + m, return_dict=False)[0]
        torch.testing.assert_close(decode(pipe, latents), want)
        images = want.clamp(-1, 1)
        posterior = vae.encode(images).latent_dist.mean
        torch.testing.assert_close(encode_to_latents(pipe, images), (posterior - m) * scale / s)
        vae.register_to_config(force_upcast=True)
        vae.to(torch.float16)
        seen = []
        hook = vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
        upcast = decode(pipe, latents)
        hook.remove()
        assert seen == [torch.float32], "the fp16 VAE with force_upcast must decode in float32"
        assert vae.dtype == torch.float16 and upcast.dtype == torch.float32
        vae.to(torch.float32)
        torch.testing.assert_close(upcast, decode(pipe, latents.half().float()), atol=2e-3, rtol=0)
