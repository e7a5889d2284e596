"""The shapes world: deterministic renders, caption grammar, prompt clusters, batch renderer."""

import numpy as np
import pytest

from sparke.embedded import world as W
from sparke.embedded.data import build_caption_pool, render_batch, sample_scenes


def test_render_is_deterministic_from_seed():
    a = [W.render(W.sample_scene(np.random.default_rng(7))) for _ in range(2)]
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], a[1])
    b = W.render(W.sample_scene(np.random.default_rng(8)))
    assert not np.array_equal(a[0], b)


def test_sample_scene_respects_fixed_attributes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = W.sample_scene(rng, shape="triangle", colour="blue", count=1, position="top left")
        assert (s.shape, s.colour, s.count, s.position) == ("triangle", "blue", 1, "top left")
        two = W.sample_scene(rng, count=2)
        assert two.count == 2 and two.size != "large"
        for o in s.objects + two.objects:
            assert o.r + 0.5 <= o.cx <= 32 - o.r - 0.5 and o.r + 0.5 <= o.cy <= 32 - o.r - 0.5


def _words(attr_words):
    return {w for ws in attr_words.values() for w in ws}


def test_captions_always_name_shape_and_colour():
    rng = np.random.default_rng(1)
    for _ in range(300):
        s = W.sample_scene(rng)
        c = W.caption(s, rng)
        assert any(w in c for w in W.COLOUR_WORDS[s.colour]), c
        assert any(sing in c or plur in c for sing, plur in W.SHAPE_WORDS[s.shape]), c
        if s.count == 2:
            assert any(w in c for w in W.TWO_WORDS), c


def test_prompt_clusters_paraphrase_one_description():
    clusters = W.prompt_clusters(10, 8, seed=3)
    assert len(clusters) == 10 and len({c.name for c in clusters}) == 10
    for cl in clusters:
        assert len(cl.prompts) == 8 and len(set(cl.prompts)) == 8  # paraphrases differ
        assert cl.required["shape"] == cl.shape and cl.required["colour"] == cl.colour
        assert "size" in cl.free and "position" in cl.free
        for p in cl.prompts:
            assert any(w in p for w in W.COLOUR_WORDS[cl.colour])
    assert W.prompt_clusters(10, 8, seed=3)[0].prompts == clusters[0].prompts  # deterministic


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_renderer_matches_reference(seed):
    pool = build_caption_pool(200, seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(1, len(pool), size=24)
    b = sample_scenes(
        rng,
        pool.shape[idx],
        pool.colour[idx],
        pool.count[idx],
        pool.size[idx],
        pool.background[idx],
        pool.position[idx],
    )
    x = render_batch(b)
    assert x.shape == (24, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    for i in range(24):
        s = b.scene(i)
        ref = W.render(s)
        got = ((x[i].permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.uint8)
        assert np.array_equal(ref, got)
        # the scene agrees with every attribute its caption states
        assert (s.shape, s.colour) == (W.SHAPES[pool.shape[idx[i]]], W.COLOURS[pool.colour[idx[i]]])
        if pool.position[idx[i]] >= 0:
            assert s.position == W.cell_name(*divmod(int(pool.position[idx[i]]), 3))
