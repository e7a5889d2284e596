"""``MethodSpec``: how a guide presents itself to the command line, the benchmark and ``sparke methods``.

Each module of ``sparke.methods`` declares the spec of its method; ``sparke.methods`` collects them into one
table. A spec's defaults are read from the guide's own constructor, so every default has one home.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["GuideLike", "MethodSpec", "constructor_defaults", "resolve_settings"]


class GuideLike(Protocol):
    """``guide(pipe, **pipe_kwargs)`` runs one (guided) pipeline call and returns the pipeline's output."""

    def __call__(self, pipe: Any, **pipe_kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class MethodSpec:
    """One generation method: its documentation, its defaults and how to build a guide.

    ``defaults`` lists every setting the method accepts (JSON-able values) besides ``scale``; ``build(scale,
    settings)`` receives all of them, defaults filled in. ``has_scale`` False: the method has no scale knob
    (only ``scale=0`` is accepted). ``per_step``: the method acts on denoising steps (``every``/``window``).
    """

    name: str
    doc: str
    paper: str
    default_scale: float
    defaults: Mapping[str, Any]
    build: Callable[[float, dict[str, Any]], GuideLike]
    has_scale: bool = True
    help: Mapping[str, str] = field(default_factory=dict)  # setting -> one-line description

    def make(self, scale: float | None = None, **overrides: Any) -> GuideLike:
        """A fresh guide; ``scale`` None = the method's default, ``overrides`` checked against ``defaults``."""
        s = self.default_scale if scale is None else float(scale)
        if not self.has_scale and s != 0:
            raise ValueError(f"scale: method {self.name!r} has no scale, got {scale!r}")
        return self.build(s, resolve_settings(self, overrides))


def constructor_defaults(factory: Callable[..., Any], names: Sequence[str]) -> dict[str, Any]:
    """The JSON-shaped defaults of ``factory``'s keyword arguments ``names`` (tuples become lists)."""
    params = inspect.signature(factory).parameters
    return json.loads(json.dumps({name: params[name].default for name in names}))


def resolve_settings(spec: MethodSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``; a setting the method lacks is a ``ValueError``."""
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        known = ", ".join(sorted(spec.defaults)) or "none"
        raise ValueError(
            f"method {spec.name!r} has no setting {', '.join(map(repr, unknown))} (its settings: {known})"
        )
    settings = dict(spec.defaults)
    settings.update(overrides)
    # settings are recorded in JSON files and compared on resume: keep them JSON-shaped (tuples -> lists)
    return json.loads(json.dumps(settings))
