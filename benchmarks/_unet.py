"""SD-1.5- and SDXL-sized denoisers with random weights, for timing only (the cost does not depend on weights).

``build(kind, backend)``: ``backend="diffusers"`` builds diffusers' ``UNet2DConditionModel`` from an in-memory
config (nothing downloaded); ``backend="torch"`` builds a plain-torch UNet of the same layout (ResNet blocks,
transformer blocks with self- and cross-attention through ``scaled_dot_product_attention``, GEGLU
feed-forward, the same channels, depths, heads and skip connections), for machines without diffusers.
The parameter counts match diffusers' within a few percent (printed by the benchmark).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# (block channels, transformer depth per block (0 = no attention), heads per block, context dim, latent size)
LAYOUTS = {
    "sd15": dict(
        channels=(320, 640, 1280, 1280), depth=(1, 1, 1, 0), heads=(8, 8, 8, 8), context=768, size=64
    ),
    "sdxl": dict(channels=(320, 640, 1280), depth=(0, 2, 10), heads=(5, 10, 20), context=2048, size=128),
    "tiny": dict(channels=(16, 32), depth=(1, 1), heads=(2, 2), context=16, size=8),
}
TOKENS = 77


def diffusers_config(kind: str) -> dict:
    lay = LAYOUTS[kind]
    down = tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in lay["depth"])
    up = tuple(("CrossAttnUpBlock2D" if d else "UpBlock2D") for d in reversed(lay["depth"]))
    config = dict(
        sample_size=lay["size"],
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=lay["channels"],
        layers_per_block=2,
        cross_attention_dim=lay["context"],
        attention_head_dim=lay["heads"] if kind == "sdxl" else lay["heads"][0],
        norm_num_groups=32 if kind != "tiny" else 8,
    )
    if kind == "sdxl":
        config.update(
            transformer_layers_per_block=tuple(max(d, 1) for d in lay["depth"]),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            mid_block_type="UNetMidBlock2DCrossAttn",
        )
    return config


def build(kind: str, backend: str, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """(model, backend used). backend "auto" tries diffusers, then the plain-torch layout."""
    if backend in ("auto", "diffusers"):
        try:
            from diffusers import UNet2DConditionModel
        except ImportError:
            if backend == "diffusers":
                raise
        else:
            with torch.device(device):
                model = UNet2DConditionModel(**diffusers_config(kind))
            return model.to(device, dtype).eval(), "diffusers"
    with torch.device(device):
        model = TorchUNet(**LAYOUTS[kind], groups=8 if kind == "tiny" else 32, xl=kind == "sdxl")
    return model.to(device, dtype).eval(), "torch"


def inputs(kind: str, batch: int, device: torch.device, dtype: torch.dtype, backend: str) -> dict:
    """Keyword arguments of one denoiser call: latents, timestep, text states (and SDXL's added conditions)."""
    lay = LAYOUTS[kind]
    kw = dict(
        sample=torch.randn(batch, 4, lay["size"], lay["size"], device=device, dtype=dtype),
        timestep=torch.tensor(500, device=device),
        encoder_hidden_states=torch.randn(batch, TOKENS, lay["context"], device=device, dtype=dtype),
    )
    if kind == "sdxl" and backend == "diffusers":
        kw["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, 1280, device=device, dtype=dtype),
            time_ids=torch.randn(batch, 6, device=device, dtype=dtype),
        )
    return kw


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(F.silu(t))[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, context: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(context or dim, dim, bias=False)
        self.v = nn.Linear(context or dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        split = lambda t: t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        h = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)))
        return self.out(h.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context)
        self.norm3, self.ff_in, self.ff_out = (
            nn.LayerNorm(dim),
            nn.Linear(dim, 8 * dim),
            nn.Linear(4 * dim, dim),
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        a, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)  # GEGLU
        return x + self.ff_out(a * F.gelu(gate))


class Transformer2D(nn.Module):
    def __init__(self, channels: int, depth: int, heads: int, context: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in, self.proj_out = nn.Linear(channels, channels), nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        for block in self.blocks:
            t = block(t, context)
        return x + self.proj_out(t).reshape(b, h, w, c).permute(0, 3, 1, 2)


class TorchUNet(nn.Module):
    """The SD UNet layout: 2 ResNet(+transformer) layers per down level, 3 per up level, a middle block."""

    def __init__(self, channels, depth, heads, context, size, groups, xl=False) -> None:
        super().__init__()
        del size
        temb = 4 * channels[0]
        self.base = channels[0]
        self.time = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.add_time = nn.Linear(2816, temb) if xl else None  # SDXL's pooled-text + size conditioning
        self.conv_in = nn.Conv2d(4, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, cin = [channels[0]], channels[0]
        for level, cout in enumerate(channels):
            for _ in range(2):
                attn = Transformer2D(
                    cout, depth[level], heads[level] if not xl else cout // 64, context, groups
                )
                self.down.append(
                    nn.ModuleList([ResBlock(cin, cout, temb, groups), attn if depth[level] else None])
                )
                skips.append(cout)
                cin = cout
            if level < len(channels) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cout, cout, 3, stride=2, padding=1)]))
                skips.append(cout)
        mid_heads = heads[-1] if not xl else channels[-1] // 64
        self.mid = nn.ModuleList(
            [
                ResBlock(cin, cin, temb, groups),
                Transformer2D(cin, max(depth[-1], 1), mid_heads, context, groups),
                ResBlock(cin, cin, temb, groups),
            ]
        )
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            cout = channels[level]
            for _ in range(3):
                attn = Transformer2D(
                    cout, depth[level], heads[level] if not xl else cout // 64, context, groups
                )
                self.up.append(
                    nn.ModuleList(
                        [ResBlock(cin + skips.pop(), cout, temb, groups), attn if depth[level] else None]
                    )
                )
                cin = cout
            if level > 0:
                self.up.append(nn.ModuleList([nn.Conv2d(cout, cout, 3, padding=1)]))
        self.norm_out, self.conv_out = nn.GroupNorm(groups, cin), nn.Conv2d(cin, 4, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, **_) -> torch.Tensor:
        half = self.base // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=sample.device) / half)
        angles = timestep.float().reshape(-1)[:, None] * freqs[None]
        t = torch.cat([angles.cos(), angles.sin()], 1).to(sample.dtype).expand(sample.shape[0], -1)
        t = self.time(t)
        if self.add_time is not None:
            t = t + self.add_time(torch.zeros(sample.shape[0], 2816, device=t.device, dtype=t.dtype))
        h = self.conv_in(sample)
        stack = [h]
        for layer in self.down:
            if len(layer) == 1:
                h = layer[0](h)
            else:
                h = layer[0](h, t)
                h = h if layer[1] is None else layer[1](h, encoder_hidden_states)
            stack.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, t), encoder_hidden_states), t)
        for layer in self.up:
            if len(layer) == 1:
                h = layer[0](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            else:
                h = layer[0](torch.cat([h, stack.pop()], 1), t)
                h = h if layer[1] is None else layer[1](h, encoder_hidden_states)
        return self.conv_out(F.silu(self.norm_out(h)))
