"""Evaluation encoder and MiniLM text features."""

import numpy as np
import pytest
import torch

from sparke.embedded import world as W
from sparke.embedded.encoder import WEIGHTS, ShapesEncoder, load_encoder
from sparke.encoders.minilm import encode_minilm


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([W.render(W.sample_scene(rng)) for _ in range(n)])
    return torch.as_tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_encoder_shape_norm_and_gradient():
    torch.manual_seed(0)
    enc = ShapesEncoder().eval()
    x = _images(4).requires_grad_(True)
    f = enc(x)
    assert f.shape == (4, 128)
    assert torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.equal(f, enc(x))  # deterministic
    (g,) = torch.autograd.grad(f[:, 0].sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0


@pytest.mark.skipif(not WEIGHTS.exists(), reason="shipped encoder not built")
def test_shipped_encoder_separates_attributes():
    enc = load_encoder()
    rng = np.random.default_rng(1)
    base = W.sample_scene(rng, shape="circle", colour="red", size="medium", background="white", count=1)
    moved = W.Scene(
        base.shape,
        base.colour,
        base.size,
        base.background,
        (W.Obj(32 - base.objects[0].cx, 32 - base.objects[0].cy, base.objects[0].r),),
    )
    recol = W.Scene(base.shape, "blue", base.size, base.background, base.objects)
    x = torch.as_tensor(np.stack([W.render(s) for s in (base, base, moved, recol)])).permute(0, 3, 1, 2)
    f = enc(x.float() / 127.5 - 1)
    assert torch.equal(f[0], f[1])
    assert float(f[0] @ f[2]) < 0.99 and float(f[0] @ f[3]) < 0.99


def test_minilm_embeddings():
    e = encode_minilm(["a red circle", "a crimson disc", "two blue squares on a black background"])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(
        e, encode_minilm(["a red circle", "a crimson disc", "two blue squares on a black background"])
    )
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])
    assert encode_minilm([]).shape == (0, 384)
