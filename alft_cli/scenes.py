"""Painting the procedural aerial scenes of :mod:`alft_cli.synthetic`: the canvas (class map
and RGB at the internal resolution), textures, and the land-cover elements (ground, water,
roads, courts, buildings, cars, trees), later elements hiding earlier ones.

Coordinates are in image units ([0, 1) across the image) so element sizes do not depend on
the output size; every mask is a vectorized expression over the pixel grid (or over a small
bounding box for tiny elements like crowns and cars).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: All classes, in their natural frequency order at ``imbalance=1`` (most common first); the
#: position in this order is the rank used by the ``imbalance`` rule.
CLASSES: tuple[str, ...] = (
    "grass", "trees", "road", "buildings", "water", "cars", "field", "bare-soil", "sand", "court",
)  # fmt: skip

INDEX = {c: i for i, c in enumerate(CLASSES)}
_GRASS = INDEX["grass"]


class Canvas:
    """The class map and RGB image being drawn, at the internal resolution."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.S = size
        c = ((np.arange(size) + 0.5) / size).astype(np.float32)
        self.X = c[None, :]
        self.Y = c[:, None]
        self.cmap = np.full((size, size), _GRASS, dtype=np.int8)
        # One sun direction per scene, so all shadows agree.
        sun = rng.uniform(0, 2 * np.pi)
        self.sun = (float(np.cos(sun)), float(np.sin(sun)))
        self.rgb = _grass_texture(rng, size)

    def noise(self, cells: int, octaves: int = 3) -> np.ndarray:
        return fractal(self.rng, self.S, cells, octaves)

    def paint(self, mask: np.ndarray, cls: str, colour: np.ndarray, sl: tuple = ()) -> None:
        """Set the class and colour of ``mask`` (optionally inside the box ``sl``)."""
        if sl:
            self.cmap[sl][mask] = INDEX[cls]
            self.rgb[sl][mask] = colour[mask] if colour.ndim == 3 else colour
        else:
            self.cmap[mask] = INDEX[cls]
            self.rgb[mask] = colour[mask] if colour.ndim == 3 else colour

    def shadow(self, mask: np.ndarray, length: float, strength: float = 0.55) -> None:
        """Darken the ground that ``mask`` shades, ``length`` image units away from the sun."""
        dx = int(round(-self.sun[0] * length * self.S))
        dy = int(round(-self.sun[1] * length * self.S))
        cast = _shift(mask, dy, dx) & ~mask
        self.rgb[cast] *= strength

    def box(self, cx: float, cy: float, r: float) -> tuple[slice, slice] | None:
        """Pixel box around a circle of radius ``r``, clipped to the image; None if outside."""
        S = self.S
        x0, x1 = max(int((cx - r) * S), 0), min(int((cx + r) * S) + 2, S)
        y0, y1 = max(int((cy - r) * S), 0), min(int((cy + r) * S) + 2, S)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def finish(self, factor: int) -> np.ndarray:
        """Downsample, vary the illumination, add sensor noise, quantize to uint8."""
        rng = self.rng
        S = self.S // factor
        img = self.rgb.reshape(S, factor, S, factor, 3).mean(axis=(1, 3))
        gain = rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.04, 3))
        # A gentle linear gradient across the image: haze or a vignetting lens.
        t = rng.uniform(0, 2 * np.pi)
        c = (np.arange(S) + 0.5) / S - 0.5
        ramp = 1 + rng.uniform(0, 0.12) * (np.cos(t) * c[None, :] + np.sin(t) * c[:, None])
        img = img * gain * ramp[..., None] + rng.normal(0, 0.012, img.shape)
        return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def fractal(rng: np.random.Generator, size: int, cells: int, octaves: int) -> np.ndarray:
    """Sum of value-noise octaves, roughly zero mean and unit variance, shape (size, size)."""
    out = np.zeros((size, size), dtype=np.float32)
    norm = 0.0
    for k in range(octaves):
        w = 0.5**k
        out += w * _value_noise(rng, size, cells * 2**k)
        norm += w * w
    return out / np.sqrt(norm)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    cells = min(cells, size)
    g = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    t = np.arange(size, dtype=np.float32) * (cells / size)
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)  # smoothstep: no visible grid creases
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a 2-D mask by whole pixels, filling with False (no wrap-around)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _jitter(
    rng: np.random.Generator, colour: Sequence[float], amount: float = 0.06, tint: float = 0.02
) -> np.ndarray:
    """A colour varied in brightness by up to ``amount`` and in hue by ``tint`` (std)."""
    c = np.asarray(colour, dtype=np.float32)
    gain = rng.uniform(1 - amount, 1 + amount) * (1 + rng.normal(0, tint, 3))
    return c * gain.astype(np.float32)


def _rot(
    cv: Canvas,
    cx: float,
    cy: float,
    theta: float,
    X: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (along, across) in a frame centred at (cx, cy) and rotated by theta."""
    X = cv.X if X is None else X
    Y = cv.Y if Y is None else Y
    # Python floats keep the float32 grid float32 (a NumPy float64 scalar would upcast it).
    c, s = float(np.cos(theta)), float(np.sin(theta))
    dx, dy = X - float(cx), Y - float(cy)
    return dx * c + dy * s, -dx * s + dy * c


def _blob(cv: Canvas, cx: float, cy: float, r: float, wobble: float = 0.25) -> np.ndarray:
    """A smooth irregular closed shape: a circle whose radius varies with the angle."""
    rng = cv.rng
    dx, dy = cv.X - float(cx), cv.Y - float(cy)
    d = np.sqrt(dx * dx + dy * dy) + 1e-6
    # cos(k a + phi) from cos(a), sin(a) by the angle-addition recurrence: no arctan2 or cos
    # over the grid, which made this the slowest shape.
    c1, s1 = dx / d, dy / d
    ck, sk = c1, s1
    rad = np.ones_like(d)
    for k in range(2, 6):
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        amp, phi = float(rng.uniform(0, wobble / k)), float(rng.uniform(0, 2 * np.pi))
        rad += amp * (ck * float(np.cos(phi)) - sk * float(np.sin(phi)))
    return d / float(r) - rad


def _grass_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    # Two greens mixed by low-frequency noise: lawns and meadows are patchy, not flat.
    a = _jitter(rng, (0.36, 0.50, 0.24), 0.08)
    b = _jitter(rng, (0.42, 0.52, 0.28), 0.08)
    mix = np.clip(0.5 + 0.35 * fractal(rng, size, 3, 2), 0, 1)[..., None]
    fine = 1 + 0.07 * fractal(rng, size, 24, 2)[..., None]
    return ((a * (1 - mix) + b * mix) * fine).astype(np.float32)


def _soil_texture(cv: Canvas) -> np.ndarray:
    base = _jitter(cv.rng, (0.56, 0.43, 0.31))
    tex = 1 + 0.12 * cv.noise(6, 2)[..., None] + 0.10 * cv.noise(32, 2)[..., None]
    return (base * tex).astype(np.float32)


def _crop_rows(cv: Canvas, theta: float) -> np.ndarray:
    """Shading of crop rows: stripes along ``theta`` (shape (S, S), values about 0.7-1.05)."""
    rng = cv.rng
    _, v = _rot(cv, 0.0, 0.0, theta)
    period = rng.uniform(0.045, 0.07)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * v / period)
    return ((1 - rng.uniform(0.18, 0.3) * stripes) * (1 + 0.05 * cv.noise(16, 2))).astype(
        np.float32
    )


def _crop(cv: Canvas) -> np.ndarray:
    crops = ((0.60, 0.64, 0.30), (0.76, 0.68, 0.38), (0.44, 0.58, 0.24), (0.66, 0.54, 0.36))
    return _jitter(cv.rng, crops[int(cv.rng.integers(len(crops)))])


def compose(cv: Canvas, inc: dict[str, bool]) -> None:
    """Draw the included elements, ground first, tall things last."""
    on = inc.get
    _ground(cv, on("grass", False), on("field", False), on("bare-soil", False))
    if on("water"):
        _water(cv, bool(on("sand")))
    roads = _roads(cv) if on("road") else []
    if on("court"):
        _court(cv, roads)
    if on("buildings"):
        _buildings(cv, roads)
    if on("cars"):
        _cars(cv, roads)
    if on("trees"):
        _trees(cv, roads)


def _ground(cv: Canvas, grass: bool, field: bool, soil: bool) -> None:
    rng = cv.rng
    kinds = [k for k, used in (("field", field), ("bare-soil", soil)) if used]
    if not kinds:
        return
    if not grass or rng.random() < 0.35:
        # Farmland: a rotated grid of parcels covering the image.
        theta = rng.uniform(0, np.pi)
        u, v = _rot(cv, 0.5, 0.5, theta)
        w, h = rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.45)
        cu, cv_ = np.floor(u / w + rng.random()), np.floor(v / h + rng.random())
        ids = np.unique(cu * 1000 + cv_, return_inverse=True)[1].reshape(cv.S, cv.S)
        n = int(ids.max()) + 1
        pool = kinds + (["grass"] if grass else [])
        # Every included kind gets at least one parcel; the rest are drawn at random.
        order = pool + [pool[int(j)] for j in rng.integers(len(pool), size=max(n - len(pool), 0))]
        kind_of = [order[int(j)] for j in rng.permutation(n)]
        soil_tex = _soil_texture(cv) if soil else None
        # Two row directions shared by all parcels (computing one texture per parcel is slow);
        # each field parcel gets its own crop colour and one of the two directions.
        rows = (_crop_rows(cv, theta), _crop_rows(cv, theta + np.pi / 2)) if field else ()
        for pid, kind in enumerate(kind_of):
            mask = ids == pid
            if kind == "field":
                shade = rows[int(rng.integers(2))][mask]
                cv.paint(mask, "field", _crop(cv) * shade[:, None])
            elif kind == "bare-soil":
                cv.paint(mask, "bare-soil", soil_tex)
        return
    if soil:
        tex = _soil_texture(cv)
        for _ in range(int(rng.integers(1, 3))):
            d = _blob(cv, *rng.uniform(0.1, 0.9, 2), rng.uniform(0.12, 0.25), 0.35)
            cv.paint(d < 0, "bare-soil", tex)
    if field:
        for _ in range(int(rng.integers(1, 3))):
            theta = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(0.1, 0.9, 2)
            u, v = _rot(cv, cx, cy, theta)
            w, h = rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.5)
            mask = (np.abs(u) < w / 2) & (np.abs(v) < h / 2)
            cv.paint(mask, "field", _crop(cv) * _crop_rows(cv, theta)[mask][:, None])


def _water(cv: Canvas, sand: bool) -> None:
    """A lake, a river or a coastline; with ``sand``, a beach along the shore."""
    rng = cv.rng
    beach = rng.uniform(0.04, 0.08) if sand else 0.0
    kind = rng.choice(["lake", "river", "coast"])
    if kind == "lake":
        d = _blob(cv, *rng.uniform(0.2, 0.8, 2), rng.uniform(0.18, 0.32), 0.3)
        dist = d * 0.25  # distance-like: d is relative to the radius
    elif kind == "river":
        u, v = _rot(cv, *rng.uniform(0.3, 0.7, 2), rng.uniform(0, np.pi))
        centre = rng.uniform(0.03, 0.1) * np.sin(
            2 * np.pi * u / rng.uniform(0.6, 1.5) + rng.uniform(0, 6.3)
        )
        dist = np.abs(v - centre) - rng.uniform(0.06, 0.12)
    else:
        u, v = _rot(cv, *rng.uniform(0.3, 0.7, 2), rng.uniform(0, 2 * np.pi))
        edge = 0.04 * np.sin(2 * np.pi * u / rng.uniform(0.4, 1.0) + rng.uniform(0, 6.3))
        dist = v - edge
    if sand:
        cv.paint(
            dist < beach,
            "sand",
            _jitter(rng, (0.86, 0.80, 0.64)) * (1 + 0.04 * cv.noise(24, 2))[..., None],
        )
    # Deeper water is darker; the shallows near the shore are lighter and greener.
    base = _jitter(rng, (0.10, 0.22, 0.38))
    depth = np.clip(-dist / 0.15, 0, 1)[..., None]
    tex = base * (1.25 - 0.35 * depth) * (1 + 0.04 * cv.noise(4, 2))[..., None]
    cv.paint(dist < 0, "water", tex.astype(np.float32))


def _roads(cv: Canvas) -> list[tuple[float, float, float, float]]:
    """One or two straight roads (the second roughly crossing the first)."""
    rng = cv.rng
    roads = []
    theta = rng.uniform(0, np.pi)
    for k in range(1 if rng.random() < 0.6 else 2):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        if k:
            theta += np.pi / 2 + rng.normal(0, 0.15)
        width = rng.uniform(0.07, 0.11)
        u, v = _rot(cv, cx, cy, theta)
        # Greys show any tint: a 2% channel shift already reads as purple next to grass.
        asphalt = (
            _jitter(rng, (0.42, 0.42, 0.43), 0.1, 0.006) * (1 + 0.05 * cv.noise(24, 1))[..., None]
        )
        cv.paint(np.abs(v) < width / 2, "road", asphalt.astype(np.float32))
        if rng.random() < 0.6:
            # Dashed centre line: the strongest cue that a grey band is a road.
            dash = (np.abs(v) < 0.008) & (np.mod(u, 0.1) < 0.05)
            cv.paint(dash, "road", np.array([0.85, 0.85, 0.8], np.float32))
        roads.append((float(cx), float(cy), float(theta), float(width)))
    return roads


def _free(
    cv: Canvas, mask: np.ndarray, blocked: Sequence[str], tol: float, sl: tuple = ()
) -> bool:
    """Whether ``mask`` (inside box ``sl``) overlaps ``blocked`` classes on <= ``tol`` of it."""
    area = mask.sum()
    if area == 0:
        return False
    cmap = cv.cmap[sl] if sl else cv.cmap
    hit = np.isin(cmap[mask], [INDEX[c] for c in blocked]).sum()
    return hit <= tol * area


def _court(cv: Canvas, roads: list) -> None:
    """A tennis-court-like rectangle: coloured surface, white lines."""
    rng = cv.rng
    surfaces = ((0.25, 0.50, 0.32), (0.22, 0.36, 0.62), (0.72, 0.36, 0.26))
    for _ in range(20):
        theta = roads[0][2] if roads and rng.random() < 0.7 else rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.2, 0.8, 2)
        u, v = _rot(cv, cx, cy, theta)
        L, W = rng.uniform(0.26, 0.34), rng.uniform(0.14, 0.18)
        mask = (np.abs(u) < L / 2) & (np.abs(v) < W / 2)
        if not _free(cv, mask, ("road", "water", "sand"), 0.02):
            continue
        surface = _jitter(rng, surfaces[int(rng.integers(len(surfaces)))], 0.05)
        cv.paint(mask, "court", surface)
        lw = 0.012
        lines = mask & (
            (np.abs(u) > L / 2 - 2 * lw) | (np.abs(v) > W / 2 - 2 * lw) | (np.abs(u) < lw)
        )
        cv.paint(lines, "court", np.array([0.92, 0.92, 0.9], np.float32))
        return


def _buildings(cv: Canvas, roads: list) -> None:
    """Houses lined up along the roads, or a few large detached buildings without roads."""
    rng = cv.rng
    roofs = ((0.55, 0.55, 0.56), (0.35, 0.35, 0.37), (0.66, 0.36, 0.28), (0.80, 0.78, 0.74))
    placed: list[tuple[tuple, np.ndarray, np.ndarray]] = []
    union = np.zeros((cv.S, cv.S), dtype=bool)
    grid = rng.uniform(0, np.pi)
    n = int(rng.integers(2, 8)) if roads else int(rng.integers(1, 4))
    for _ in range(n):
        for _try in range(8):
            if roads:
                rx, ry, theta, width = roads[int(rng.integers(len(roads)))]
                L, W = rng.uniform(0.09, 0.17), rng.uniform(0.08, 0.13)
                t = rng.uniform(-0.6, 0.6)
                off = rng.choice([-1, 1]) * (width / 2 + rng.uniform(0.03, 0.07) + W / 2)
                cx = rx + t * np.cos(theta) - off * np.sin(theta)
                cy = ry + t * np.sin(theta) + off * np.cos(theta)
            else:
                theta = grid + rng.choice([0, np.pi / 2])
                L, W = rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.2)
                cx, cy = rng.uniform(0.15, 0.85, 2)
            sl = cv.box(cx, cy, float(np.hypot(L, W)) / 2)
            if sl is None:
                continue
            u, v = _rot(cv, cx, cy, theta, cv.X[:, sl[1]], cv.Y[sl[0]])
            mask = (np.abs(u) < L / 2) & (np.abs(v) < W / 2)
            if mask.sum() < 0.004 * cv.S**2 or (mask & union[sl]).any():
                continue
            if not _free(cv, mask, ("road", "water", "court"), 0.03, sl):
                continue
            roof = _jitter(rng, roofs[int(rng.integers(len(roofs)))])
            if rng.random() < 0.6:
                # Gable roof: the half facing the sun is lit, the other half is in shade.
                side = np.sign(v * (-np.sin(theta) * cv.sun[0] + np.cos(theta) * cv.sun[1]))
                tex = roof * (1 + 0.12 * side)[..., None]
            else:
                # Flat roof: a darker parapet rim around a uniform top.
                rim = (np.abs(u) > L / 2 - 0.012) | (np.abs(v) > W / 2 - 0.012)
                tex = roof * np.where(rim, 0.8, 1.0)[..., None]
            placed.append((sl, mask, tex.astype(np.float32)))
            union[sl] |= mask
            break
    if not placed:
        return
    cv.shadow(union, rng.uniform(0.02, 0.04))
    for sl, mask, tex in placed:
        cv.paint(mask, "buildings", tex, sl)


def _cars(cv: Canvas, roads: list) -> None:
    """Small coloured rectangles in the lanes, aligned with the road."""
    rng = cv.rng
    palette = (
        (0.85, 0.85, 0.85),
        (0.12, 0.12, 0.14),
        (0.75, 0.12, 0.10),
        (0.15, 0.25, 0.60),
        (0.85, 0.75, 0.15),
        (0.55, 0.57, 0.60),
    )
    road_id, car_id = INDEX["road"], INDEX["cars"]
    for rx, ry, theta, width in roads:
        for _ in range(int(rng.integers(1, 7))):
            t = rng.uniform(-0.7, 0.7)
            lane = rng.choice([-1, 1]) * width / 4
            cx = float(rx + t * np.cos(theta) - lane * np.sin(theta))
            cy = float(ry + t * np.sin(theta) + lane * np.cos(theta))
            if not (0 <= cx < 1 and 0 <= cy < 1):
                continue
            # Only on asphalt that is still visible and not already taken by another car.
            if cv.cmap[int(cy * cv.S), int(cx * cv.S)] != road_id:
                continue
            L, W = rng.uniform(0.065, 0.085), rng.uniform(0.032, 0.04)
            sl = cv.box(cx, cy, L)
            if sl is None:
                continue
            u, v = _rot(cv, cx, cy, theta + rng.normal(0, 0.05), cv.X[:, sl[1]], cv.Y[sl[0]])
            mask = (np.abs(u) < L / 2) & (np.abs(v) < W / 2)
            if (cv.cmap[sl][mask] == car_id).any():
                continue
            cv.rgb[sl][_shift(mask, 1, 1) & ~mask] *= 0.6
            body = _jitter(rng, palette[int(rng.integers(len(palette)))], 0.05)
            # A darker windscreen band makes the car read as a car, not a speck.
            glass = mask & (np.abs(u - L * 0.15) < L * 0.1)
            cv.paint(mask, "cars", body, sl)
            cv.rgb[sl][glass] *= 0.45


def _trees(cv: Canvas, roads: list) -> None:
    """Tree crowns in clumps, in rows along roads, or scattered; shadows cast as one layer."""
    rng = cv.rng
    S = cv.S
    centres: list[tuple[float, float]] = []
    layouts = rng.choice(
        ["clump", "street", "scatter"], size=int(rng.integers(1, 3)), replace=False
    )
    for layout in layouts:
        if layout == "street" and not roads:
            layout = "clump"
        if layout == "clump":
            for _ in range(int(rng.integers(1, 3))):
                d = _blob(cv, *rng.uniform(0.1, 0.9, 2), rng.uniform(0.12, 0.26), 0.35)
                ys, xs = np.nonzero(d < 0)
                if len(ys):
                    pick = rng.choice(
                        len(ys), size=min(len(ys), int(rng.integers(12, 45))), replace=False
                    )
                    centres += [((xs[j] + 0.5) / S, (ys[j] + 0.5) / S) for j in pick]
        elif layout == "street":
            rx, ry, theta, width = roads[int(rng.integers(len(roads)))]
            off = rng.choice([-1, 1]) * (width / 2 + rng.uniform(0.03, 0.05))
            step = rng.uniform(0.08, 0.12)
            for t in np.arange(-0.75, 0.75, step) + rng.uniform(0, step):
                centres.append(
                    (
                        rx + t * np.cos(theta) - off * np.sin(theta),
                        ry + t * np.sin(theta) + off * np.cos(theta),
                    )
                )
        else:
            centres += [tuple(p) for p in rng.uniform(0, 1, (int(rng.integers(3, 12)), 2))]
    blocked = [INDEX[c] for c in ("road", "water", "buildings", "court", "cars")]
    layer = np.zeros((S, S), dtype=bool)
    crowns = []
    for cx, cy in centres:
        if not (0 <= cx < 1 and 0 <= cy < 1) or cv.cmap[int(cy * S), int(cx * S)] in blocked:
            continue
        cx, cy, r = float(cx), float(cy), float(rng.uniform(0.025, 0.05))
        sl = cv.box(cx, cy, r)
        if sl is None:
            continue
        # Lit on the sun side: the highlight sits off-centre towards the sun.
        hx, hy = cx + 0.35 * r * cv.sun[0], cy + 0.35 * r * cv.sun[1]
        dx, dy = cv.X[:, sl[1]] - cx, cv.Y[sl[0]] - cy
        # Round crowns; overlapping ones make the irregular outline of a clump.
        mask = dx * dx + dy * dy < r * r
        lit = 1 - ((cv.X[:, sl[1]] - hx) ** 2 + (cv.Y[sl[0]] - hy) ** 2) / (1.8 * r) ** 2
        colour = _jitter(rng, (0.14, 0.30, 0.13), 0.12)
        tex = colour * (0.6 + 0.6 * np.clip(lit, 0, 1))[..., None]
        crowns.append((sl, mask, tex.astype(np.float32)))
        layer[sl] |= mask
    if not crowns:
        return
    cv.shadow(layer, rng.uniform(0.02, 0.035), 0.5)
    for sl, mask, tex in crowns:
        cv.paint(mask, "trees", tex, sl)
