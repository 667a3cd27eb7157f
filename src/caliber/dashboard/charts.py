"""Plots of Results values, drawn on the server as SVG (no chart library, nothing fetched from
the internet): a list or 1-D array of numbers as a line chart, a dict of numbers as bars, a
2-D array (or a list of equal rows of numbers) as a heat map.

Every text put in a drawing (a dict's keys) is escaped; numbers are formatted by Python. Big
arrays are reduced first, so a drawing stays small whatever the value: a line keeps the
minimum and maximum of each of :data:`LINE_POINTS` slices (a spike is never lost), a heat
map the mean of blocks of at most :data:`HEAT_CELLS` by :data:`HEAT_CELLS`.

A numpy array is reduced slice by slice (:class:`Slices`), so a stored one is plotted
without being read into memory whole (:func:`svg_of_slices`, given a
:class:`caliber.results.arrays.ArrayReader`): memory stays bounded by a slice and the
reduction, whatever the array's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from html import escape
from typing import Any, Protocol

LINE_POINTS = 600
"""Slices a long line is reduced to (each drawn by its minimum and maximum)."""
HEAT_CELLS = 120
"""Rows and columns a heat map is reduced to, at most."""
BARS = 60
"""Bars drawn at most (the first ones, in the dict's order)."""
WIDTH, HEIGHT = 640, 260
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 16, 12, 28


SLICE_ITEMS = 1 << 17
"""Items of an array in memory reduced at a time (the temporaries of a heat map's block
sums are this long)."""


class Slices(Protocol):
    """An array given slice by slice: its shape, dtype, order of items, and the slices."""

    shape: tuple[int, ...]
    dtype: Any
    fortran: bool
    """Whether the items come in Fortran order (the first index varying fastest)."""

    def slices(self) -> Iterator[tuple[int, Any]]:
        """(index of its first item, its items as a 1-D array) for each slice, in order."""


class _InMemory:
    """An array in memory as :class:`Slices` (views of it, in C order)."""

    def __init__(self, array: Any) -> None:
        import numpy as np

        self.shape, self.dtype, self.fortran = tuple(array.shape), array.dtype, False
        self._flat = np.ravel(array)

    def slices(self) -> Iterator[tuple[int, Any]]:
        for start in range(0, self._flat.size, SLICE_ITEMS):
            yield start, self._flat[start:start + SLICE_ITEMS]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        float(value))


def _numpy(value: Any) -> Any:
    """``value`` as a numeric numpy array, or None (numpy only if it is installed)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - a dashboard without numpy draws lists only
        return None
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in "iuf" and value.size else None
    return None


def kind_of_array(shape: tuple[int, ...] | list[int], dtype: Any) -> str | None:
    """What an array of this shape and (numpy) dtype is drawn as: ``"line"``,
    ``"heatmap"`` or None (neither numbers nor 1 or 2 dimensions, or empty)."""
    if dtype.kind not in "iuf" or not math.prod(shape):
        return None
    return {1: "line", 2: "heatmap"}.get(len(shape))


def kind_of(value: Any) -> str | None:
    """``"line"``, ``"bars"``, ``"heatmap"`` or None (nothing to plot)."""
    array = _numpy(value)
    if array is not None:
        return kind_of_array(array.shape, array.dtype)
    if isinstance(value, list) and len(value) >= 2:
        if all(_is_number(v) for v in value):
            return "line"
        if (all(isinstance(r, list) and r for r in value)
                and len({len(r) for r in value}) == 1
                and all(_is_number(v) for r in value for v in r)):
            return "heatmap"
    if (isinstance(value, dict) and value
            and all(_is_number(v) for v in value.values())):
        return "bars"
    return None


def svg(value: Any, title: str = "") -> str | None:
    """The drawing of ``value`` (see :func:`kind_of`), or None."""
    kind = kind_of(value)
    if kind == "line":
        return _line(value, title)
    if kind == "bars":
        return _bars(value, title)
    if kind == "heatmap":
        return _heatmap(value, title)
    return None


def svg_of_slices(array: Slices, title: str = "") -> str | None:
    """The drawing of an array given slice by slice, or None (see :func:`kind_of_array`).
    The slices are all read before anything is drawn: an error the last one raises (a
    stored array found damaged) leaves nothing drawn."""
    kind = kind_of_array(array.shape, array.dtype)
    if kind == "line":
        return _line_drawing(*_line_of(array), title)
    if kind == "heatmap":
        return _heatmap_drawing(*_grid_of(array), title)
    return None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _frame(title: str, body: list[str], lo: float, hi: float, n: int) -> str:
    """The axes around ``body``: the value range on the left, the count below."""
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{WIDTH - PAD_LEFT - PAD_RIGHT}" '
        f'height="{plot_h}" fill="none" stroke="#bbb"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 10}" text-anchor="end" '
        f'font-size="11">{_fmt(hi)}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{HEIGHT - PAD_BOTTOM}" text-anchor="end" '
        f'font-size="11">{_fmt(lo)}</text>',
        f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end" '
        f'font-size="11">{n:,} values</text>',
        *body,
        "</svg>",
    ]
    return "\n".join(parts)


def _reduce_line(value: Any) -> tuple[list[tuple[float, float]], int]:
    """(min, max) of each slice of the values, and how many values there are."""
    array = _numpy(value)
    if array is not None:
        return _line_of(_InMemory(array))
    values = [float(v) for v in value]
    n = len(values)
    if n <= LINE_POINTS:
        return [(v, v) for v in values], n
    step = n / LINE_POINTS
    slices = [values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]
              for i in range(LINE_POINTS)]
    return [(min(s), max(s)) for s in slices], n


def _line_of(array: Slices) -> tuple[list[tuple[float, float]], int]:
    """(min, max) of each of :data:`LINE_POINTS` slices of the array's values (each value
    alone when there are no more), slice by slice, and how many values there are. A NaN
    makes its slice's minimum and maximum NaN (that slice is not drawn)."""
    import numpy as np

    n = math.prod(array.shape)
    edges = (np.arange(n + 1) if n <= LINE_POINTS
             else np.linspace(0, n, LINE_POINTS + 1).astype(int))
    lows = np.full(edges.size - 1, np.inf)
    highs = np.full(edges.size - 1, -np.inf)
    for start, items in array.slices():
        stop = start + items.size
        first = int(np.searchsorted(edges, start, side="right")) - 1  # the slice start is in
        last = int(np.searchsorted(edges, stop, side="left"))  # one past the slice stop is in
        offsets = np.maximum(edges[first:last] - start, 0)
        values = items.astype(float, copy=False)
        np.minimum(lows[first:last], np.minimum.reduceat(values, offsets), out=lows[first:last])
        np.maximum(highs[first:last], np.maximum.reduceat(values, offsets),
                   out=highs[first:last])
    return [(float(a), float(b)) for a, b in zip(lows, highs, strict=True)], n


def _line(value: Any, title: str) -> str:
    return _line_drawing(*_reduce_line(value), title)


def _line_drawing(pairs: list[tuple[float, float]], n: int, title: str) -> str:
    finite = [v for pair in pairs for v in pair if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def y(v: float) -> float:
        return PAD_TOP + plot_h - (v - lo) / span * plot_h

    count = len(pairs)
    points: list[str] = []
    for i, (a, b) in enumerate(pairs):
        x = PAD_LEFT + (i / max(count - 1, 1)) * plot_w
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        points.append(f"{x:.1f},{y(a):.1f}")
        if b != a:
            points.append(f"{x:.1f},{y(b):.1f}")
    body = [f'<polyline fill="none" stroke="#1f6fb2" stroke-width="1.5" '
            f'points="{" ".join(points)}"/>']
    return _frame(title, body, lo, hi, n)


def _bars(value: dict[Any, Any], title: str) -> str:
    items = list(value.items())[:BARS]
    numbers = [float(v) for _, v in items]
    lo, hi = min([0.0, *numbers]), max([0.0, *numbers])
    span = hi - lo or 1.0
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / len(items)
    zero = PAD_TOP + plot_h - (0 - lo) / span * plot_h
    body = []
    for i, (key, number) in enumerate(zip((k for k, _ in items), numbers, strict=True)):
        top = PAD_TOP + plot_h - (number - lo) / span * plot_h
        x = PAD_LEFT + i * slot + slot * 0.1
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{min(top, zero):.1f}" width="{slot * 0.8:.1f}" '
            f'height="{abs(zero - top):.1f}" fill="#2a9d8f">'
            f"<title>{escape(str(key))}: {_fmt(number)}</title></rect>")
        if len(items) <= 20:
            body.append(f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - 14}" font-size="10" '
                        f'text-anchor="middle">{escape(str(key))[:12]}</text>')
    return _frame(title, body, lo, hi, len(value))


def _reduce_grid(value: Any) -> tuple[list[list[float]], int]:
    array = _numpy(value)
    if array is None:
        plain = [[float(v) for v in row] for row in value]
        rows, cols = len(plain), len(plain[0])
        n = rows * cols
        fr, fc = math.ceil(rows / HEAT_CELLS), math.ceil(cols / HEAT_CELLS)
        grid = []
        for r0 in range(0, rows, fr):
            line = []
            for c0 in range(0, cols, fc):
                block = [v for row in plain[r0:r0 + fr] for v in row[c0:c0 + fc]]
                line.append(sum(block) / len(block))
            grid.append(line)
        return grid, n
    return _grid_of(_InMemory(array))


def _grid_of(array: Slices) -> tuple[list[list[float]], int]:
    """The mean of each block of at most ``ceil(rows / HEAT_CELLS)`` by ``ceil(cols /
    HEAT_CELLS)`` values (NaN left out; a block of NaN alone is NaN), summed slice by slice,
    and how many values there are."""
    import numpy as np

    rows, cols = array.shape
    fr, fc = math.ceil(rows / HEAT_CELLS), math.ceil(cols / HEAT_CELLS)
    grid_rows, grid_cols = math.ceil(rows / fr), math.ceil(cols / fc)
    sums = np.zeros(grid_rows * grid_cols)
    counts = np.zeros(grid_rows * grid_cols)
    for start, items in array.slices():
        index = np.arange(start, start + items.size)
        if array.fortran:
            row, col = index % rows, index // rows
        else:
            row, col = index // cols, index % cols
        cell = (row // fr) * grid_cols + col // fc
        values = items.astype(float, copy=False)
        kept = ~np.isnan(values)
        sums += np.bincount(cell[kept], weights=values[kept], minlength=sums.size)
        counts += np.bincount(cell[kept], minlength=counts.size)
    with np.errstate(invalid="ignore"):  # 0 / 0: a block of NaN alone
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means.reshape(grid_rows, grid_cols).tolist(), rows * cols


def _colour(t: float) -> str:
    """A blue-to-yellow ramp for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    r = int(40 + t * 213)
    g = int(60 + t * 171)
    b = int(140 - t * 110)
    return f"#{r:02x}{g:02x}{b:02x}"


def _heatmap(value: Any, title: str) -> str:
    return _heatmap_drawing(*_reduce_grid(value), title)


def _heatmap_drawing(grid: list[list[float]], n: int, title: str) -> str:
    finite = [v for row in grid for v in row if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    rows, cols = len(grid), len(grid[0])
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    cw, ch = plot_w / cols, plot_h / rows
    body = ['<g class="heatmap" shape-rendering="crispEdges">']
    for r, row in enumerate(grid):
        for c, v in enumerate(row):
            fill = _colour((v - lo) / span) if math.isfinite(v) else "#fff"
            body.append(f'<rect x="{PAD_LEFT + c * cw:.2f}" y="{PAD_TOP + r * ch:.2f}" '
                        f'width="{cw + 0.05:.2f}" height="{ch + 0.05:.2f}" fill="{fill}"/>')
    body.append("</g>")
    return _frame(title, body, lo, hi, n)
