"""Shape kinds: unit templates that the renderer scales, rotates and places.

Every template is a convex polygon inside the unit box ``[0, 1]²`` with its local
origin ``(0, 0)`` at the box corner. Convexity is relied upon by the exact scanline
rasteriser (:mod:`shapesgen.raster`) and guarantees that clipping to the image frame
leaves a single polygon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SQRT3_2 = math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class ShapeKind:
    """A family of shapes: its template and how a size is given for it."""

    name: str
    rotation_invariant: bool
    size_arity: int
    description: str

    def template(self, circle_segments: int) -> np.ndarray:
        """Vertices ``(V, 2)`` of the unit template, counter-clockwise in y-down coords."""
        if self.name in ("circle", "ellipse"):
            t = np.linspace(0.0, 2.0 * math.pi, circle_segments, endpoint=False)
            return np.stack([0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t)], axis=1)
        if self.name == "triangle":
            return np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
        if self.name in ("rectangle", "square"):
            return np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        raise AssertionError(f"no template for {self.name}")

    def box(self, size: tuple[float, ...]) -> tuple[float, float]:
        """Width and height (fractions of the image side) of the bounding box."""
        if self.name == "triangle":
            return size[0], size[0] * SQRT3_2
        if self.size_arity == 1:
            return size[0], size[0]
        return size[0], size[1]


SHAPE_KINDS: dict[str, ShapeKind] = {
    kind.name: kind
    for kind in (
        ShapeKind("circle", True, 1, "circle; size = diameter"),
        ShapeKind("triangle", False, 1, "equilateral triangle; size = side"),
        ShapeKind("rectangle", False, 2, "rectangle; size = width x height"),
        ShapeKind("ellipse", False, 2, "ellipse; size = width x height"),
        ShapeKind("square", False, 1, "square; size = side"),
    )
}
