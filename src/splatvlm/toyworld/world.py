"""The toy world: procedural objects built in code as Gaussian scenes, each with a caption.

Every object is a list of colored primitives (ellipsoids and boxes) in the z-up world, inside the unit
ball. The front faces +x (azimuth 0 of our orbit cameras). Parts tagged ``front`` are the object's front
feature (a face, a logo, headlights); an object with such parts has a front that differs from its back.
Its Janus variant copies those parts, mirrored through the x = 0 plane, onto the back: a two-faced object,
the failure the reward is meant to catch, which the metrics measure against the ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..errors import SplatVLMError
from ..gaussians.scene import make_params, rgb_to_sh0

RGB = tuple[float, float, float]
Vec = tuple[float, float, float]

WHITE, BLACK, RED, GREEN, BLUE = (
    (0.95, 0.95, 0.95),
    (0.08, 0.08, 0.08),
    (0.85, 0.15, 0.12),
    (0.2, 0.7, 0.25),
    (0.15, 0.3, 0.85),
)
YELLOW, ORANGE, BROWN, GRAY, PINK = (
    (0.95, 0.85, 0.15),
    (1.0, 0.5, 0.05),
    (0.5, 0.3, 0.12),
    (0.55, 0.55, 0.6),
    (0.95, 0.55, 0.7),
)
PURPLE, TEAL = (0.55, 0.2, 0.75), (0.1, 0.6, 0.6)


@dataclass(frozen=True)
class Part:
    """One primitive: an axis-aligned ellipsoid (``half`` = radii) or box (``half`` = half extents)."""

    shape: str  # "ellipsoid" or "box"
    center: Vec
    half: Vec
    color: RGB
    front: bool = False  # part of the front feature


@dataclass(frozen=True)
class ToyObject:
    name: str
    caption: str
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def front_back(self) -> bool:
        """Whether the front differs from the back (the object has a front feature)."""
        return any(p.front for p in self.parts)


def E(center: Vec, half: Vec | float, color: RGB, front: bool = False) -> Part:
    half = (half, half, half) if isinstance(half, int | float) else half
    return Part("ellipsoid", center, half, color, front)


def B(center: Vec, half: Vec, color: RGB, front: bool = False) -> Part:
    return Part("box", center, half, color, front)


def _eyes(x: float, z: float, dy: float, r: float, color: RGB = BLACK) -> list[Part]:
    return [E((x, -dy, z), r, color, True), E((x, dy, z), r, color, True)]


def world() -> list[ToyObject]:
    """The 14 objects of the toy world (names are stable ids; captions are what generate is given)."""
    objs = [
        ToyObject(
            "snowman",
            "a snowman with an orange nose",
            (
                E((0, 0, -0.25), 0.22, WHITE),
                E((0, 0, 0.05), 0.16, WHITE),
                E((0, 0, 0.27), 0.11, WHITE),
                E((0.13, 0, 0.27), (0.07, 0.03, 0.03), ORANGE, True),
                *_eyes(0.095, 0.32, 0.045, 0.022),
            ),
        ),
        ToyObject(
            "mug",
            "a blue mug with a red heart logo",
            (
                E((0, 0, 0), (0.2, 0.2, 0.25), BLUE),
                E((0, 0.25, 0), (0.04, 0.09, 0.12), BLUE),
                E((0.19, 0, 0.02), (0.03, 0.09, 0.09), RED, True),
            ),
        ),
        ToyObject(
            "table",
            "a brown wooden table",
            (
                B((0, 0, 0.1), (0.38, 0.28, 0.03), BROWN),
                *[
                    B((sx * 0.32, sy * 0.22, -0.15), (0.03, 0.03, 0.22), BROWN)
                    for sx in (-1, 1)
                    for sy in (-1, 1)
                ],
            ),
        ),
        ToyObject(
            "bird",
            "a yellow bird with a beak and black eyes",
            (
                E((0, 0, -0.05), (0.26, 0.18, 0.17), YELLOW),
                E((0.2, 0, 0.13), 0.12, YELLOW),
                E((-0.27, 0, 0.0), (0.1, 0.05, 0.04), YELLOW),
                E((0.33, 0, 0.12), (0.07, 0.035, 0.03), ORANGE, True),
                *_eyes(0.29, 0.17, 0.06, 0.025),
            ),
        ),
        ToyObject(
            "house",
            "a white house with a red roof and a door",
            (
                B((0, 0, -0.12), (0.28, 0.3, 0.2), WHITE),
                B((0, 0, 0.14), (0.3, 0.32, 0.07), RED),
                B((0, 0, 0.25), (0.2, 0.22, 0.05), RED),
                B((0.285, 0, -0.18), (0.02, 0.08, 0.13), BROWN, True),
            ),
        ),
        ToyObject(
            "robot",
            "a gray robot head with green eyes and a mouth",
            (
                B((0, 0, 0), (0.22, 0.24, 0.24), GRAY),
                E((0, 0, 0.3), (0.03, 0.03, 0.07), GRAY),
                *_eyes(0.225, 0.07, 0.1, 0.05, GREEN),
                B((0.225, 0, -0.11), (0.02, 0.12, 0.03), BLACK, True),
            ),
        ),
        ToyObject(
            "mushroom",
            "a red mushroom with a white stem",
            (
                E((0, 0, -0.15), (0.1, 0.1, 0.22), WHITE),
                E((0, 0, 0.1), (0.32, 0.32, 0.15), RED),
            ),
        ),
        ToyObject(
            "tree",
            "a green tree with a brown trunk",
            (
                B((0, 0, -0.3), (0.06, 0.06, 0.15), BROWN),
                E((0, 0, -0.05), (0.26, 0.26, 0.16), GREEN),
                E((0, 0, 0.2), (0.17, 0.17, 0.14), GREEN),
            ),
        ),
        ToyObject(
            "tower",
            "a tower of red, green and blue cubes",
            (
                B((0, 0, -0.28), (0.17, 0.17, 0.12), RED),
                B((0, 0, -0.04), (0.14, 0.14, 0.12), GREEN),
                B((0, 0, 0.2), (0.11, 0.11, 0.12), BLUE),
            ),
        ),
        ToyObject(
            "car",
            "a red car with yellow headlights",
            (
                B((0, 0, -0.1), (0.38, 0.18, 0.09), RED),
                B((-0.05, 0, 0.06), (0.2, 0.16, 0.08), RED),
                *[
                    E((sx * 0.22, sy * 0.18, -0.2), (0.08, 0.03, 0.08), BLACK)
                    for sx in (-1, 1)
                    for sy in (-1, 1)
                ],
                *_eyes(0.38, -0.08, 0.11, 0.045, YELLOW),
            ),
        ),
        ToyObject(
            "lamp",
            "a purple lamp with a yellow shade",
            (
                E((0, 0, -0.33), (0.16, 0.16, 0.04), PURPLE),
                B((0, 0, -0.05), (0.025, 0.025, 0.26), PURPLE),
                E((0, 0, 0.24), (0.2, 0.2, 0.12), YELLOW),
            ),
        ),
        ToyObject(
            "dumbbell",
            "a black dumbbell",
            (
                E((0, -0.3, 0), 0.14, BLACK),
                E((0, 0.3, 0), 0.14, BLACK),
                B((0, 0, 0), (0.03, 0.2, 0.03), GRAY),
            ),
        ),
        ToyObject(
            "chair",
            "a teal chair with a high back",
            (
                B((0, 0, -0.02), (0.2, 0.2, 0.03), TEAL),
                B((-0.18, 0, 0.2), (0.02, 0.2, 0.2), TEAL),
                *[
                    B((sx * 0.17, sy * 0.17, -0.22), (0.025, 0.025, 0.18), TEAL)
                    for sx in (-1, 1)
                    for sy in (-1, 1)
                ],
            ),
        ),
        ToyObject(
            "pig",
            "a pink pig with a snout",
            (
                E((0, 0, -0.05), (0.3, 0.2, 0.18), PINK),
                E((0.28, 0, 0.07), 0.13, PINK),
                E((0.4, 0, 0.05), (0.03, 0.06, 0.05), (0.8, 0.35, 0.45), True),
                *_eyes(0.37, 0.13, 0.06, 0.02),
                *[
                    E((sx * 0.16, sy * 0.1, -0.25), (0.05, 0.05, 0.08), PINK)
                    for sx in (-1, 1)
                    for sy in (-1, 1)
                ],
            ),
        ),
    ]
    # Headlights are the car's front feature.
    car = objs[9]
    objs[9] = replace(car, parts=tuple(replace(p, front=True) if p.color == YELLOW else p for p in car.parts))
    return objs


def get_objects(names: list[str] | None = None) -> list[ToyObject]:
    objs = world()
    if not names:
        return objs
    by_name = {o.name: o for o in objs}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SplatVLMError(f"unknown toy object(s) {', '.join(missing)}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names]


def janus_variant(obj: ToyObject) -> ToyObject:
    """The object with its front feature also on the back (mirrored through x = 0): a two-faced object."""
    if not obj.front_back:
        raise SplatVLMError(f"{obj.name} has no front feature to copy")
    back = [replace(p, center=(-p.center[0], p.center[1], p.center[2])) for p in obj.parts if p.front]
    return replace(obj, name=obj.name + "-janus", parts=obj.parts + tuple(back))


def mirrored(obj: ToyObject) -> ToyObject:
    """The object turned around (mirrored through x = 0): front and back swap."""
    parts = tuple(replace(p, center=(-p.center[0], p.center[1], p.center[2])) for p in obj.parts)
    return replace(obj, name=obj.name + "-mirrored", parts=parts)


# ---------------------------------------------------------------------------------------------
# Parts -> Gaussians


def _area(p: Part) -> float:
    a, b, c = p.half
    if p.shape == "box":
        return 8 * (a * b + b * c + a * c)
    # Knud Thomsen's approximation of an ellipsoid's surface area.
    q = 1.6075
    return 4 * math.pi * (((a * b) ** q + (a * c) ** q + (b * c) ** q) / 3) ** (1 / q)


def _surface_points(p: Part, n: int, g: torch.Generator) -> Tensor:  # [n, 3]
    half = torch.tensor(p.half)
    if p.shape == "ellipsoid":
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
        pts = d * half
    elif p.shape == "box":
        a, b, c = p.half
        faces = torch.tensor([b * c, b * c, a * c, a * c, a * b, a * b])
        face = torch.multinomial(faces, n, replacement=True, generator=g)
        pts = (2 * torch.rand(n, 3, generator=g) - 1) * half
        axis = face // 2
        sign = (face % 2).float() * 2 - 1
        pts[torch.arange(n), axis] = sign * half[axis]
    else:
        raise SplatVLMError(f"unknown part shape {p.shape!r}")
    return pts + torch.tensor(p.center)


def object_params(obj: ToyObject, num_points: int = 1500, seed: int = 0) -> torch.nn.ParameterDict:
    """The object as a Gaussian scene: points on every part's surface, about evenly spaced, opaque.

    Front-feature parts get at least 60 points each so small features stay solid.
    """
    g = torch.Generator().manual_seed(seed)
    areas = torch.tensor([_area(p) for p in obj.parts])
    total = float(areas.sum())
    means, colors, scales = [], [], []
    for p, area in zip(obj.parts, areas.tolist(), strict=True):
        n = max(60 if p.front else 30, round(num_points * area / total))
        means.append(_surface_points(p, n, g))
        shade = 0.9 + 0.1 * torch.rand(n, 1, generator=g)
        colors.append((torch.tensor(p.color) * shade).clamp(0, 1))
        spacing = math.sqrt(area / n)
        scales.append(torch.full((n, 3), math.log(0.7 * spacing)))
    means_t = torch.cat(means)
    n = len(means_t)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return make_params(
        means=means_t,
        quats=quats,
        scales=torch.cat(scales),
        opacities=torch.full((n,), 4.0),
        sh0=rgb_to_sh0(torch.cat(colors))[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def front_part_mask(obj: ToyObject, num_points: int = 1500, seed: int = 0) -> Tensor:
    """[N] bool: which Gaussians of ``object_params(obj, ...)`` belong to front-feature parts."""
    areas = [_area(p) for p in obj.parts]
    total = sum(areas)
    out = []
    for p, area in zip(obj.parts, areas, strict=True):
        n = max(60 if p.front else 30, round(num_points * area / total))
        out.append(torch.full((n,), p.front))
    return torch.cat(out)
