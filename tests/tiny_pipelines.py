"""Tiny random-weight diffusers pipelines, built offline in memory, for tests.

Configs follow diffusers' own `get_dummy_components` (tests/pipelines/*/test_*.py); the hub tokenizers used
there are replaced by CLIP and T5 tokenizers built in memory. Every component is put in eval mode, as
`from_pretrained` would (T5 dropout otherwise makes two identical calls differ).

Each `tiny_*()` returns a fresh pipeline (float32, CPU). `call_kwargs(pipe_or_name, ...)` gives small call
arguments that run in well under a second on two CPU cores:

    pipe = tiny_sd()
    out = pipe(**call_kwargs("sd", prompt=["a cat", "a dog"], seed=0))
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = [
    "NAMES",
    "build",
    "call_kwargs",
    "clip_tokenizer",
    "control_image",
    "dit_class_labels",
    "final_latents",
    "pipeline_state",
    "same_state",
    "t5_tokenizer",
    "tiny_controlnet",
    "tiny_dit",
    "tiny_flux",
    "tiny_pixart",
    "tiny_sd",
    "tiny_sd3",
    "tiny_sdxl",
]

NAMES = ("sd", "sdxl", "pixart", "sd3", "flux", "dit", "controlnet")

_WORDS = ["a", "photo", "of", "cat", "dog", "red", "car", "blue", "bird", "tree", "house", "painting"]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@functools.lru_cache(maxsize=1)
def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    # A few merges so that common words are single tokens; every part must itself be in the vocabulary.
    for word in _WORDS:
        cur = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + "</w>" if i == len(word) - 1 else ch
            merges.append((cur, nxt))
            cur = cur + nxt
            if cur not in tokens:
                tokens.append(cur)
    merges = list(dict.fromkeys(merges))
    # Specials last: CLIP with eos_token_id=2 pools at argmax(input_ids), which must be the end token.
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer():
    """An in-memory CLIP BPE tokenizer, under 1,000 ids, model_max_length 77."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def t5_tokenizer():
    """An in-memory T5 (unigram) tokenizer with under 256 pieces."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [("▁" + w, -1.0) for w in _WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(cfg)


def _clip_config(**kw: Any):
    from transformers import CLIPTextConfig

    base = dict(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    base.update(kw)
    return CLIPTextConfig(**base)


def _eval(components: dict[str, Any]) -> dict[str, Any]:
    for v in components.values():
        if isinstance(v, torch.nn.Module):
            v.eval()
    return components


def _finish(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )


def tiny_sd(scheduler: Any = None):
    """Stable Diffusion 1.5-style pipeline; DDIM by default; latents (B, 4, H/2, W/2)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    vae = _sd_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config(intermediate_size=64, num_hidden_layers=3))
    comps = _eval(
        dict(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            scheduler=scheduler
            or DDIMScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                clip_sample=False,
                set_alpha_to_one=False,
                steps_offset=1,
            ),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
        )
    )
    return _finish(StableDiffusionPipeline(**comps, requires_safety_checker=False))


def tiny_sdxl(scheduler: Any = None):
    """SDXL-style pipeline (two CLIP encoders, text_time conditioning); Euler by default."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = _sd_vae()
    torch.manual_seed(0)
    te = CLIPTextModel(_clip_config(num_hidden_layers=2))
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(_clip_config(num_hidden_layers=2))
    sched = scheduler or EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    comps = _eval(
        dict(
            unet=unet,
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            scheduler=sched,
            image_encoder=None,
            feature_extractor=None,
        )
    )
    return _finish(StableDiffusionXLPipeline(**comps))


def tiny_pixart(scheduler: Any = None):
    """PixArt-Sigma-style pipeline (T5 text encoder, learned sigma); DDIM by default."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4)
    comps = _eval(
        dict(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler or DDIMScheduler(),
            text_encoder=_t5_encoder(),
            tokenizer=t5_tokenizer(),
        )
    )
    return _finish(PixArtSigmaPipeline(**comps))


def tiny_sd3(scheduler: Any = None):
    """SD3-style pipeline (two CLIP + T5, MMDiT); flow-matching Euler by default."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    torch.manual_seed(0)
    te = CLIPTextModelWithProjection(_clip_config(num_hidden_layers=2))
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(_clip_config(num_hidden_layers=2))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    comps = _eval(
        dict(
            scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
            text_encoder=te,
            text_encoder_2=te2,
            text_encoder_3=_t5_encoder(),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            tokenizer_3=t5_tokenizer(),
            transformer=transformer,
            vae=vae,
        )
    )
    return _finish(StableDiffusion3Pipeline(**comps))


def tiny_flux(scheduler: Any = None):
    """Flux-style pipeline (CLIP + T5, packed latents (B, seq, C*4)); flow-matching Euler by default."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(0)
    te = CLIPTextModel(_clip_config(num_hidden_layers=2))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    comps = _eval(
        dict(
            scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
            text_encoder=te,
            text_encoder_2=_t5_encoder(),
            tokenizer=clip_tokenizer(),
            tokenizer_2=t5_tokenizer(),
            transformer=transformer,
            vae=vae,
            image_encoder=None,
            feature_extractor=None,
        )
    )
    return _finish(FluxPipeline(**comps))


_DIT_LABELS = {0: "tench", 1: "goldfish", 2: "great white shark", 3: "tiger shark", 4: "hammerhead"}


def tiny_dit(scheduler: Any = None):
    """DiT-style class-conditional pipeline (1,000 classes, learned sigma); DDIM by default; 16 px."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=16,
        num_layers=2,
        patch_size=4,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4)
    comps = _eval(dict(transformer=transformer, vae=vae, scheduler=scheduler or DDIMScheduler()))
    return _finish(DiTPipeline(**comps, id2label=dict(_DIT_LABELS)))


def tiny_controlnet(scheduler: Any = None):
    """ControlNet on the tiny SD pipeline; pass `image=control_image(...)`."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = tiny_sd(scheduler)
    torch.manual_seed(0)
    controlnet = ControlNetModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=2,
    ).eval()
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        controlnet=controlnet,
        scheduler=sd.scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def dit_class_labels(n: int = 2) -> list[int]:
    """`n` class ids of the tiny DiT (names in `pipe.labels`)."""
    return [i % len(_DIT_LABELS) for i in range(n)]


def control_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """A random control image (1, 3, size, size) in [0, 1] for `tiny_controlnet`."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g)


_BUILDERS = {
    "sd": tiny_sd,
    "sdxl": tiny_sdxl,
    "pixart": tiny_pixart,
    "sd3": tiny_sd3,
    "flux": tiny_flux,
    "dit": tiny_dit,
    "controlnet": tiny_controlnet,
}

# Image side in pixels per pipeline: small, and valid for each VAE / patch size.
_SIZE = {"sd": 32, "sdxl": 32, "pixart": 16, "sd3": 16, "flux": 16, "dit": 16, "controlnet": 32}


def build(name: str, scheduler: Any = None):
    """Build the tiny pipeline called `name` (one of NAMES)."""
    return _BUILDERS[name](scheduler)


def name_of(pipe: Any) -> str:
    cls = type(pipe).__name__
    table = {
        "StableDiffusionPipeline": "sd",
        "StableDiffusionXLPipeline": "sdxl",
        "PixArtSigmaPipeline": "pixart",
        "StableDiffusion3Pipeline": "sd3",
        "FluxPipeline": "flux",
        "DiTPipeline": "dit",
        "StableDiffusionControlNetPipeline": "controlnet",
    }
    return table[cls]


def call_kwargs(
    pipe_or_name: Any,
    prompt: list[str] | str | None = None,
    *,
    num_images_per_prompt: int = 1,
    steps: int = 3,
    seed: int = 0,
    output_type: str = "latent",
    **extra: Any,
) -> dict[str, Any]:
    """Small call arguments for a tiny pipeline. For DiT the prompts' count sets the number of class labels.

    `output_type="latent"` by default (no VAE decode: faster, and the tests compare latents).
    """
    name = pipe_or_name if isinstance(pipe_or_name, str) else name_of(pipe_or_name)
    prompts = ["a photo of a cat", "a red car"] if prompt is None else prompt
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    kw: dict[str, Any] = dict(
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
    )
    if name == "dit":
        # DiT always decodes; it has no "latent" output type.
        kw["class_labels"] = dit_class_labels(len(prompts) * num_images_per_prompt)
        kw["output_type"] = "pt" if output_type == "latent" else output_type
    else:
        kw["prompt"] = prompts
        kw["num_images_per_prompt"] = num_images_per_prompt
        kw["height"] = kw["width"] = _SIZE[name]
    if name == "pixart":
        kw["use_resolution_binning"] = False
        kw["max_sequence_length"] = 16
        kw["clean_caption"] = False
    if name in ("sd3", "flux"):
        kw["max_sequence_length"] = 16
    if name == "controlnet":
        kw["image"] = control_image(_SIZE[name], seed)
    kw.update(extra)
    return kw


def final_latents(out: Any) -> torch.Tensor:
    """The tensor of a pipeline output (`.images`, or the first element of a tuple)."""
    images = out.images if hasattr(out, "images") else out[0]
    return torch.as_tensor(images)


def pipeline_state(pipe: Any) -> dict[str, Any]:
    """What a plug-in must leave unchanged: scheduler identity, class and state, configs, hooks, callbacks."""
    sched = pipe.scheduler
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    hooks = 0
    for module in modules:
        for sub in module.modules():
            hooks += len(sub._forward_pre_hooks) + len(sub._forward_hooks) + len(sub._backward_hooks)
    return {
        "scheduler_id": id(sched),
        "scheduler_class": type(sched),
        "scheduler_instance_attrs": sorted(vars(sched)),
        "scheduler_state": {k: v for k, v in vars(sched).items() if k != "_internal_dict"},
        "scheduler_config": dict(sched.config),
        "pipe_config": {k: v for k, v in pipe.config.items()},
        "hooks": hooks,
        "callback_tensor_inputs": list(getattr(pipe, "_callback_tensor_inputs", []) or []),
        "grad_params": sum(p.grad is not None for m in modules for p in m.parameters()),
        "training": [m.training for m in modules],
    }


def same_state(a: Any, b: Any) -> bool:
    """Deep equality that compares tensors and arrays by value (and dtype/shape)."""
    import numpy as np

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_state(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)
