"""SPARKE's keywords of before ``Update`` keep working until sparke 0.3, each with a DeprecationWarning that
names the new form, and build the same guide as the new form."""

from __future__ import annotations

import re

import pytest

from sparke import SPARKE, AutoBank, Update
from sparke.guidance.options import names

OLD_UPDATE = {
    "centre": 0.5,
    "motion": "global",
    "warp": False,
    "step": "raw",
    "kernel": "cosine",
    "step_schedule": "noise",
    "smooth": 1.0,
    "gate": 1.1,
    "orthogonal": True,
    "crowding": 0.5,
}


def test_every_update_field_has_an_old_keyword_case():
    assert set(OLD_UPDATE) == set(names("update"))


@pytest.mark.parametrize("name", sorted(OLD_UPDATE))
def test_an_old_update_keyword_warns_and_builds_the_new_form(name):
    value = OLD_UPDATE[name]
    new_form = re.escape(f"removed in sparke 0.3: use SPARKE(update=sparke.Update({name}={value!r}))")
    with pytest.warns(DeprecationWarning, match=new_form):
        old = SPARKE(**{name: value})
    new = SPARKE(update=Update(**{name: value}))
    assert old.update == new.update and old.spec == new.spec
    assert getattr(old, name) == (new.update.warps if name == "warp" else value)  # read as before


def test_old_keywords_combine_with_an_update_and_with_each_other():
    with pytest.warns(DeprecationWarning, match=r"SPARKE\(motion=0, centre=False\)"):
        guide = SPARKE(space="latent", motion=0, centre=False, update=Update(step="raw"))
    assert guide.update == Update(motion=0, centre=False, step="raw") == Update.paper(step="raw")


@pytest.mark.parametrize("options", [{"crossover": 10}, {"neighbors": 32, "samples": 8}])
def test_old_bank_keywords_warn_and_reach_the_guides_own_bank(options):
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    with pytest.warns(DeprecationWarning, match=rf"bank=sparke\.AutoBank\({given}\)"):
        guide = SPARKE(**options)
    assert guide.follows_pipeline and isinstance(guide.bank, AutoBank)
    for key, value in options.items():
        got = guide.bank.crossover if key == "crossover" else guide.bank.index_options[key]
        assert got == value


def test_a_bad_old_keyword_value_is_refused_like_the_new_form():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="motion: must be"):
        SPARKE(motion=-1)
    with pytest.raises(ValueError, match="warp: moves by the fitted displacement"):
        SPARKE(update=Update(motion=0, warp=True))
    with pytest.raises(TypeError, match="unexpected keyword"):
        SPARKE(motoin=2)
