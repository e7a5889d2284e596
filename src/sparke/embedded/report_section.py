"""The shapes world's block in each prompt cluster of ``sparke report``'s page: which positions, sizes and
backgrounds (the attributes a prompt leaves free) occur among the images that match their prompt, read by the
checker. Registered into ``sparke.core.extensions.CLUSTER_SECTIONS`` by ``sparke.embedded``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["FREE_ATTRIBUTES", "free_attributes_section"]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


FREE_ATTRIBUTES = (("position", "positions", 9), ("size", "sizes", 3), ("background", "backgrounds", 4))


def free_attributes_section(
    infos: Sequence[dict[str, Any]], members: Sequence[str], by_run_prompt: Sequence[dict[str, list]]
) -> str:
    """Per run, the positions, sizes and backgrounds (the attributes the prompts leave free) that occur among
    the cluster's images that match their prompt, read by the embedded world's checker ('' for other models)."""
    try:
        import scipy  # noqa: F401 (the checker needs it)
    except ImportError:
        return ""
    from sparke.embedded.requirements import is_embedded_model, required_from_prompt

    rows = []
    for info, groups in zip(infos, by_run_prompt, strict=True):
        if not is_embedded_model(info["model"]):
            continue
        records = [rec for p in members for rec in groups.get(p, [])]
        if not records:
            continue
        required = records[0].get("required") or required_from_prompt(records[0]["prompt"]) or {}
        free = [a for a in FREE_ATTRIBUTES if required.get(a[0]) is None]
        good, counts = _free_counts(info["run"].path, records, [a[0] for a in free])
        cells = []
        for name, _plural, possible in free:
            if name == "size" and int(required.get("count", 1)) == 2:
                possible = 2  # two large shapes do not fit
            seen = sorted(counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
            chips = " ".join(f"<span class='chip'>{_esc(v)}&times;{n}</span>" for v, n in seen)
            cells.append(f"<td><b>{min(len(seen), possible)}/{possible}</b> {chips}</td>")
        rows.append(
            f"<tr><td class='l'>{_esc(info['label'])}</td><td>{good}/{len(records)}</td>"
            + "".join(cells)
            + "</tr>"
        )
    if not rows:
        return ""
    head = "".join(f"<th class='l'>{plural}</th>" for _, plural, _ in free)
    return (
        "<details class='free-attrs' open><summary>Free attributes among the images that match their prompt "
        "(the checker's reading; more distinct values = more diverse)</summary><div class='scroll'><table><thead>"
        f"<tr><th class='l'>run</th><th>matching</th>{head}</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div></details>"
    )


def _free_counts(folder: Any, records: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[int, dict]:
    """(how many of ``records``' images match their prompt, and among them each free attribute's values
    with their counts), read by the checker."""
    import numpy as np
    from PIL import Image

    from sparke.embedded.checker import check, matches
    from sparke.embedded.requirements import required_from_prompt

    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    good = 0
    for rec in records:
        req = rec.get("required") or required_from_prompt(rec["prompt"])
        if req is None:
            continue
        try:
            with Image.open(folder / rec["file"]) as im:
                detected = check(np.asarray(im.convert("RGB")))
        except OSError:
            continue
        if not matches(detected, req):
            continue
        good += 1
        for name in names:
            value = detected["objects"][0]["position"] if name == "position" else detected.get(name)
            if value is not None:
                counts[name][value] = counts[name].get(value, 0) + 1
    return good, counts
