"""A tiny procedural world of coloured shapes, with captions and prompt clusters.

Images are 32x32 RGB (uint8), rendered with numpy alone and fully determined by a
:class:`Scene`. Captions always name the shape and the colour (and the count when it is
two); size, position and background are mentioned only sometimes, so when a prompt leaves
them out they are *free* attributes: a diverse generator should vary them.

A :class:`Cluster` is one scene description (shape, colour, count, optionally background)
with many paraphrases; a benchmark checks fidelity on the required attributes and measures
the diversity of the free ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # 4x4 samples per pixel: anti-aliased edges, so small shapes keep their outline

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated, well separated colours; none is close to a background colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (25, 25, 30),
    "grey": (120, 120, 120),
    "beige": (225, 205, 160),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)

# Half-extent r (pixels) ranges: a shape spans about 2r pixels in each direction.
SIZES: dict[str, tuple[float, float]] = {"small": (2.5, 3.5), "medium": (4.5, 5.5), "large": (7.0, 8.5)}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "centre", "right")

P_TWO_OBJECTS = 0.2  # one object is the common case


def cell_of(cx: float, cy: float, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """3x3 grid cell (row, col) of a point in pixel coordinates (0..size)."""
    col = min(max(int(cx * 3 / size), 0), 2)
    row = min(max(int(cy * 3 / size), 0), 2)
    return row, col


def cell_name(row: int, col: int) -> str:
    """Readable name of a grid cell: 'top left', 'centre', 'bottom', ..."""
    if (row, col) == (1, 1):
        return "centre"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class Obj:
    """One shape: centre (cx, cy) and half-extent r in pixels."""

    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Scene:
    """A scene: 1-2 objects of the same shape, colour and size class on a plain background."""

    shape: str
    colour: str
    size: str
    background: str
    objects: tuple[Obj, ...]

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def cells(self) -> tuple[tuple[int, int], ...]:
        """Grid cell (row, col) of each object's centre."""
        return tuple(cell_of(o.cx, o.cy) for o in self.objects)

    @property
    def position(self) -> str:
        """Cell name of the first object (the only one in the common case)."""
        return cell_name(*self.cells[0])

    def attributes(self) -> dict:
        """Attributes as a dict, comparable with :func:`sparke.embedded.checker.check`."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "background": self.background,
            "count": self.count,
            "position": self.position,
        }


def _inside(shape: str, x: np.ndarray, y: np.ndarray, o: Obj) -> np.ndarray:
    """Boolean mask of sample points (x, y) inside the shape."""
    dx, dy = x - o.cx, y - o.cy
    if shape == "circle":
        return dx * dx + dy * dy <= o.r * o.r
    if shape == "square":
        return (np.abs(dx) <= o.r) & (np.abs(dy) <= o.r)
    if shape == "triangle":
        # Apex up at cy - r, base at cy + r, base width 2r: the bounding box is centred on (cx, cy).
        return (dy <= o.r) & (np.abs(dx) <= (dy + o.r) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, o: Obj, size: int = IMAGE_SIZE, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by the object, (size, size) float32 in [0, 1]."""
    t = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss
    x, y = np.meshgrid(t, t)
    m = _inside(shape, x, y, o).astype(np.float32)
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a scene to a (size, size, 3) uint8 RGB image."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    fg = np.asarray(PALETTE[scene.colour], np.float32)
    for o in scene.objects:
        a = coverage(scene.shape, o, size)[..., None]
        img = img * (1 - a) + fg * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, r: float, size: int = IMAGE_SIZE) -> tuple[float, float]:
    lo, hi = r + 0.5, size - r - 0.5
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def sample_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    background: str | None = None,
    count: int | None = None,
    position: str | None = None,
) -> Scene:
    """Draw a random scene; any attribute given is fixed, the others are drawn uniformly.

    Two objects are drawn with probability 0.2 and are never large (two large shapes do not
    fit side by side); their bounding boxes keep a 2-pixel gap so they stay separate.
    """
    if count is None:
        count = 2 if rng.random() < P_TWO_OBJECTS else 1
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    background = background or BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))]
    if size is None:
        names = SIZE_NAMES if count == 1 else SIZE_NAMES[:2]
        size = names[rng.integers(len(names))]
    lo, hi = SIZES[size]
    for _ in range(1000):
        objs: list[Obj] = []
        for _ in range(count):
            r = float(rng.uniform(lo, hi))
            for _ in range(200):
                cx, cy = _place(rng, r)
                if position is not None and not objs and cell_name(*cell_of(cx, cy)) != position:
                    continue
                gap_ok = all(max(abs(cx - p.cx) - r - p.r, abs(cy - p.cy) - r - p.r) >= 2.0 for p in objs)
                if gap_ok:
                    objs.append(Obj(cx, cy, r))
                    break
        if len(objs) == count:
            return Scene(shape, colour, size, background, tuple(objs))
    raise RuntimeError("could not place objects")  # pragma: no cover - never seen


# ----------------------------------------------------------------------------- captions

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry red"),
    "orange": ("orange", "tangerine", "amber", "bright orange"),
    "yellow": ("yellow", "golden", "lemon yellow", "mustard"),
    "green": ("green", "emerald", "grass green", "leaf green"),
    "cyan": ("cyan", "turquoise", "teal", "aqua"),
    "blue": ("blue", "cobalt", "royal blue", "sapphire"),
    "purple": ("purple", "violet", "lilac", "plum"),
}
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs"), ("round shape", "round shapes"), ("dot", "dots")),
    "square": (
        ("square", "squares"),
        ("box", "boxes"),
        ("square shape", "square shapes"),
        ("block", "blocks"),
    ),
    "triangle": (
        ("triangle", "triangles"),
        ("triangular shape", "triangular shapes"),
        ("wedge", "wedges"),
        ("pyramid shape", "pyramid shapes"),
    ),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white", "light", "plain white"),
    "black": ("black", "dark", "pitch black"),
    "grey": ("grey", "gray", "neutral grey"),
    "beige": ("beige", "sand-coloured", "pale cream"),
}
BG_PHRASES = ("on a {} background", "against a {} backdrop", "over a {} background", "with a {} background")
PREFIXES = (
    "",
    "",
    "",
    "an image of ",
    "a picture of ",
    "a photo of ",
    "a drawing of ",
    "a simple illustration of ",
    "a rendering of ",
    "clip art of ",
)
TWO_WORDS = ("two", "2", "a pair of")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _choice(rng: np.random.Generator, options: tuple) -> object:
    return options[rng.integers(len(options))]


def describe(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    count: int = 1,
    size: str | None = None,
    background: str | None = None,
    position: str | None = None,
) -> str:
    """One random paraphrase naming the given attributes (and only those)."""
    cw = str(_choice(rng, COLOUR_WORDS[colour]))
    sing, plur = _choice(rng, SHAPE_WORDS[shape])  # type: ignore[misc]
    adj = [cw]
    if size is not None:
        sw = str(_choice(rng, SIZE_WORDS[size]))
        adj = [sw, cw] if rng.random() < 0.8 else [cw, sw]
    noun = " ".join([*adj, sing if count == 1 else plur])
    if count == 1:
        core = f"{_article(noun)} {noun}"
    else:
        core = f"{_choice(rng, TWO_WORDS)} {noun}"
    extras = []
    if position is not None:
        if position == "centre":
            opts: tuple[str, ...] = ("in the centre", "in the center", "in the middle", "at the centre")
        elif position in ("left", "right", "top", "bottom"):
            opts = (f"on the {position}", f"on the {position} side", f"at the {position}")
        else:
            opts = (f"in the {position} corner", f"at the {position}", f"in the {position}")
        extras.append(str(_choice(rng, opts)))
    if background is not None:
        bw = str(_choice(rng, BACKGROUND_WORDS[background]))
        extras.append(str(_choice(rng, BG_PHRASES)).format(bw))
    if len(extras) == 2 and rng.random() < 0.5:
        extras.reverse()
    text = str(_choice(rng, PREFIXES)) + core
    if extras:
        text += " " + " ".join(extras)
    return text


def caption(
    scene: Scene,
    rng: np.random.Generator,
    p_size: float = 0.35,
    p_position: float = 0.25,
    p_background: float = 0.35,
) -> str:
    """A random caption of a scene: shape and colour (and count when 2) always, others sometimes."""
    return describe(
        rng,
        scene.shape,
        scene.colour,
        scene.count,
        size=scene.size if rng.random() < p_size else None,
        background=scene.background if rng.random() < p_background else None,
        position=scene.position if scene.count == 1 and rng.random() < p_position else None,
    )


@dataclass
class Cluster:
    """A scene description and its paraphrases; attributes not in ``required`` are free."""

    name: str
    prompts: list[str]
    shape: str
    colour: str
    count: int = 1
    background: str | None = None
    size: str | None = None
    position: str | None = None
    free: tuple[str, ...] = field(default=())

    @property
    def required(self) -> dict:
        """The attributes the prompts fix (shape, colour, count, and any others mentioned)."""
        req = {"shape": self.shape, "colour": self.colour, "count": self.count}
        for k in ("background", "size", "position"):
            v = getattr(self, k)
            if v is not None:
                req[k] = v
        return req


def prompt_clusters(
    n_clusters: int, prompts_per_cluster: int, seed: int = 0, p_background: float = 0.25
) -> list[Cluster]:
    """``n_clusters`` distinct scene descriptions, each with ``prompts_per_cluster`` paraphrases.

    Shape, colour and count are always required; a background is required with probability
    ``p_background``. Size and position are left free (and so is the background when not
    required). Paraphrases within a cluster are distinct whenever the grammar allows it.
    """
    rng = np.random.default_rng(seed)
    combos = [
        (s, c, n, bg) for s in SHAPES for c in COLOURS for n in (1, 2) for bg in (None, *BACKGROUND_NAMES)
    ]
    order = rng.permutation(len(combos))
    chosen: list[tuple] = []
    for i in order:
        s, c, n, bg = combos[i]
        want_bg = rng.random() < p_background
        if (bg is not None) != want_bg or (n == 2 and rng.random() < 0.6):
            continue  # keep one object the common case, backgrounds a minority
        chosen.append(combos[i])
        if len(chosen) == n_clusters:
            break
    for i in order:  # fall back on anything left when the filters were too strict
        if len(chosen) == n_clusters:
            break
        if combos[i] not in chosen:
            chosen.append(combos[i])
    clusters = []
    for s, c, n, bg in chosen:
        prompts: list[str] = []
        seen: set[str] = set()
        for _ in range(prompts_per_cluster * 50):
            p = describe(rng, s, c, n, background=bg)
            if p not in seen:
                seen.add(p)
                prompts.append(p)
            if len(prompts) == prompts_per_cluster:
                break
        while len(prompts) < prompts_per_cluster:  # grammar exhausted: repeat
            prompts.append(prompts[len(prompts) % len(seen)])
        name = f"{'two ' if n == 2 else ''}{c} {s}{'s' if n == 2 else ''}" + (f" on {bg}" if bg else "")
        free = ("size", "position") + (() if bg else ("background",))
        clusters.append(Cluster(name, prompts, s, c, n, bg, free=free))
    return clusters
