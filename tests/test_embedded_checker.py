"""The classical checker reads clean renders almost perfectly."""

import numpy as np

from sparke.embedded import world as W
from sparke.embedded.checker import check, match_rate, matches


def test_checker_accuracy_on_heldout_renders():
    rng = np.random.default_rng(2024)
    n = 400
    correct = {k: 0 for k in ("shape", "colour", "size", "background", "count", "position")}
    n_pos = 0
    for _ in range(n):
        s = W.sample_scene(rng)
        d = check(W.render(s))
        a = s.attributes()
        for k in correct:
            if k == "position":
                if s.count == 1:  # with two objects the "position" of the first is ambiguous
                    n_pos += 1
                    correct[k] += d[k] == a[k]
            else:
                correct[k] += d[k] == a[k]
    acc = {k: v / (n_pos if k == "position" else n) for k, v in correct.items()}
    assert all(v >= 0.98 for v in acc.values()), acc
    assert acc["shape"] >= 0.995 and acc["colour"] == 1.0 and acc["count"] == 1.0, acc


def test_matches_uses_required_attributes_only():
    rng = np.random.default_rng(5)
    s = W.sample_scene(rng, shape="circle", colour="red", count=1, background="black")
    d = check(W.render(s))
    assert matches(d, {"shape": "circle", "colour": "red"})
    assert matches(d, {"shape": "circle", "colour": "red", "background": "black"})
    assert not matches(d, {"shape": "square", "colour": "red"})
    assert not matches(d, {"shape": "circle", "colour": "blue"})
    assert not matches(d, {"shape": "circle", "colour": "red", "count": 2})
    assert not matches(d, {"shape": "circle", "colour": "red", "background": "white"})
    assert matches(d, s)
    cl = W.Cluster("red circle", ["a red circle"], "circle", "red")
    assert match_rate([W.render(s)] * 3, cl) == 1.0


def test_blank_image_has_no_objects():
    img = np.full((32, 32, 3), W.BACKGROUNDS["grey"], np.uint8)
    d = check(img)
    assert d["count"] == 0 and d["shape"] is None and d["background"] == "grey"
    assert not matches(d, {"shape": "circle", "colour": "red"})
