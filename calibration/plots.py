"""The report's plots, drawn with OpenCV (no plotting dependency): axes, ticks, labels and colour bars.

Every plot is a pure function of its data returning a :class:`Figure`: the BGR
image plus what it shows in words (axis labels, tick labels, colour bar,
named marks such as the residual rings' radii), which the report uses as the
image's alt text and tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (40, 40, 40)
GRID = (225, 225, 225)
DOTS = (200, 90, 20)  # BGR: blue
RMS_RING = (40, 160, 40)  # green
RMS3_RING = (30, 120, 230)  # orange


@dataclass(frozen=True)
class Figure:
    """A drawn plot and a description of it.

    ``marks``: named quantities in image pixels or data units (see each plot),
    e.g. ``rms_ring_px`` (ring radius in image pixels) and ``px_per_unit``.
    """

    image: np.ndarray
    title: str
    x_label: str
    y_label: str
    x_ticks: tuple[str, ...]
    y_ticks: tuple[str, ...]
    colorbar: str | None = None
    colorbar_ticks: tuple[str, ...] = ()
    marks: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the report's alt text: title, axes and ticks, colour bar."""
        parts = [self.title, f"x axis: {self.x_label} ({', '.join(self.x_ticks)})",
                 f"y axis: {self.y_label} ({', '.join(self.y_ticks)})"]
        if self.colorbar:
            parts.append(f"colour bar: {self.colorbar} ({', '.join(self.colorbar_ticks)})")
        return "; ".join(parts)


# --------------------------------------------------------------------------- helpers
def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 times a power of ten) covering ``[lo, hi]``."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(v) < 1e-12 * step else round(v, 12))
        v += step
    return ticks


def symmetric_axis(extent: float, max_ticks_per_side: int = 3) -> tuple[float, float]:
    """``(limit, step)``: the smallest axis ``[-limit, limit]`` covering ``extent`` that ends on a round tick,
    with at most ``max_ticks_per_side`` ticks of ``step`` on each side of zero."""
    extent = extent if extent > 0 else 1.0
    mag = 10 ** math.floor(math.log10(extent))
    best = None
    for m10 in (mag / 10, mag, mag * 10):
        for f in (1, 2, 2.5, 5):
            step = f * m10
            n = math.ceil(extent / step - 1e-9)
            if 1 <= n <= max_ticks_per_side and (best is None or n * step < best[0] - 1e-15):
                best = (n * step, step)
    return best if best is not None else (extent, extent)


def tick_label(v: float, ticks: list[float]) -> str:
    """``v`` with as many decimals as the tick step needs."""
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:])), default=1.0) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0)
    return f"{v:.{decimals}f}"


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.4, color=INK, anchor: str = "left") -> None:
    (w, h), _ = cv2.getTextSize(s, FONT, scale, 1)
    x, y = org
    if anchor == "center":
        x -= w // 2
    elif anchor == "right":
        x -= w
    cv2.putText(img, s, (int(x), int(y + h // 2)), FONT, scale, color, 1, cv2.LINE_AA)


def _vertical_text(img: np.ndarray, s: str, center: tuple[int, int], scale: float = 0.4, color=INK) -> None:
    """Text rotated 90 degrees counter-clockwise (reads bottom to top), centred on ``center``."""
    (w, h), base = cv2.getTextSize(s, FONT, scale, 1)
    tile = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(tile, s, (2, h + 2), FONT, scale, color, 1, cv2.LINE_AA)
    tile = cv2.rotate(tile, cv2.ROTATE_90_COUNTERCLOCKWISE)
    th, tw = tile.shape[:2]
    x0, y0 = int(center[0] - tw // 2), int(center[1] - th // 2)
    x0, y0 = max(0, x0), max(0, y0)
    region = img[y0:y0 + th, x0:x0 + tw]
    np.minimum(region, tile[:region.shape[0], :region.shape[1]], out=region)


@dataclass(frozen=True)
class _Axes:
    """A plot area inside a canvas, mapping data ``(x, y)`` to pixels (y up)."""

    left: int
    top: int
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def px(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        u = self.left + (np.asarray(x, float) - x0) / (x1 - x0) * self.width
        v = self.top + self.height - (np.asarray(y, float) - y0) / (y1 - y0) * self.height
        return u, v


def _frame(img: np.ndarray, ax: _Axes, title: str, x_label: str, y_label: str,
           x_ticks: list[float] | None, y_ticks: list[float], grid: bool = True) -> tuple[list[str], list[str]]:
    """Draw the box, ticks, tick labels, axis labels and title; return the tick labels written."""
    xl = [tick_label(v, x_ticks) for v in x_ticks] if x_ticks is not None else []
    yl = [tick_label(v, y_ticks) for v in y_ticks]
    bottom, right = ax.top + ax.height, ax.left + ax.width
    for v, s in zip(x_ticks or [], xl):
        u, _ = ax.px(v, ax.y_range[0])
        u = int(round(float(u)))
        if grid:
            cv2.line(img, (u, ax.top), (u, bottom), GRID, 1)
        cv2.line(img, (u, bottom), (u, bottom + 4), INK, 1)
        _text(img, s, (u, bottom + 12), anchor="center")
    for v, s in zip(y_ticks, yl):
        _, w = ax.px(ax.x_range[0], v)
        w = int(round(float(w)))
        if grid:
            cv2.line(img, (ax.left, w), (right, w), GRID, 1)
        cv2.line(img, (ax.left - 4, w), (ax.left, w), INK, 1)
        _text(img, s, (ax.left - 7, w), anchor="right")
    cv2.rectangle(img, (ax.left, ax.top), (right, bottom), INK, 1)
    _text(img, title, (ax.left + ax.width // 2, 12), 0.45, anchor="center")
    if x_label:
        _text(img, x_label, (ax.left + ax.width // 2, img.shape[0] - 10), anchor="center")
    _vertical_text(img, y_label, (10, ax.top + ax.height // 2))
    return xl, yl


# --------------------------------------------------------------------------- plots
def residual_scatter(residuals: np.ndarray, rms_px: float, camera: str, size: int = 420) -> Figure:
    """Reprojection residuals (observed - projected, px) around the origin.

    The axes are scaled to the data (they reach past the 3xRMS ring and the
    99.5th percentile); green ring at the RMS, orange at 3xRMS. ``marks``:
    ``rms_ring_px``/``rms3_ring_px`` (ring radii, image px), ``px_per_unit``
    (image px per residual px) and ``rms_px``.
    """
    r = np.asarray(residuals, float).reshape(-1, 2)
    rms = float(rms_px) if rms_px and math.isfinite(rms_px) and rms_px > 0 else (float(np.sqrt((r ** 2).sum(1).mean())) if len(r) else 1.0)
    extent = max(3.3 * rms, float(np.percentile(np.abs(r), 99.5)) * 1.05 if len(r) else 0.0)
    lim, step = symmetric_axis(extent)
    m = int(round(lim / step))
    ticks = [round(i * step, 12) for i in range(-m, m + 1)]
    left, top, bottom_pad, right_pad = 62, 26, 40, 14
    plot = size - left - right_pad
    img = np.full((top + plot + bottom_pad, size, 3), 255, np.uint8)
    ax = _Axes(left, top, plot, plot, (-lim, lim), (-lim, lim))
    xl, yl = _frame(img, ax, f"{camera}: reprojection residuals ({len(r)} corners)", "x residual (px)",
                    "y residual (px)", ticks, ticks)
    cu, cv_ = (float(v) for v in ax.px(0.0, 0.0))
    k = plot / (2 * lim)
    cv2.line(img, (int(cu), top), (int(cu), top + plot), (190, 190, 190), 1)
    cv2.line(img, (left, int(cv_)), (left + plot, int(cv_)), (190, 190, 190), 1)
    if len(r):
        u, v = ax.px(r[:, 0], r[:, 1])
        for a, b in zip(u.astype(int), v.astype(int)):
            cv2.circle(img, (int(a), int(b)), 1, DOTS, -1, cv2.LINE_AA)
    centre = (int(round(cu)), int(round(cv_)))
    for radius, color in ((rms, RMS_RING), (3 * rms, RMS3_RING)):
        cv2.circle(img, centre, int(round(radius * k)), color, 2, cv2.LINE_AA)
    _text(img, f"RMS {rms:.3f} px", (left + 6, top + 10), color=RMS_RING)
    _text(img, f"3xRMS {3 * rms:.3f} px", (left + 6, top + 24), color=RMS3_RING)
    return Figure(img, f"{camera}: reprojection residuals", "x residual (px)", "y residual (px)", tuple(xl), tuple(yl),
                  marks={"rms_ring_px": rms * k, "rms3_ring_px": 3 * rms * k, "px_per_unit": k, "rms_px": rms,
                         "centre_x": cu, "centre_y": cv_})


def per_view_bars(per_view_rms: dict[str, float], camera: str, overall_rms: float | None = None,
                  height: int = 300, title: str | None = None, y_label: str = "RMS (px)",
                  highlight: set[str] | frozenset = frozenset(), line_label: str | None = None) -> Figure:
    """Per-view values as bars (default: reprojection RMS, px), every view named under its bar.

    A line at ``overall_rms`` (labelled ``line_label``, default "all views");
    views in ``highlight`` are drawn red (e.g. pairs left out).
    """
    names = list(per_view_rms)
    vals = np.array([per_view_rms[n] for n in names], float)
    top_v = max([float(vals.max()) if len(vals) else 0.0, overall_rms or 0.0]) * 1.15 or 1.0
    ticks = nice_ticks(0.0, top_v, 5)
    top_v = max(top_v, ticks[-1])
    ticks = [t for t in ticks if t <= top_v + 1e-12]
    name_h = max([cv2.getTextSize(n, FONT, 0.35, 1)[0][0] for n in names], default=10) + 10
    left, top, right_pad = 62, 42, 14
    bw = max(12, min(40, 640 // max(1, len(names))))
    plot_w = max(300, bw * len(names))
    plot_h = height - top - name_h - 28
    img = np.full((height, left + plot_w + right_pad, 3), 255, np.uint8)
    ax = _Axes(left, top, plot_w, plot_h, (0.0, float(max(1, len(names)))), (0.0, top_v))
    _, yl = _frame(img, ax, title or f"{camera}: per-view RMS", "", y_label, None, ticks)
    bottom = top + plot_h
    for i, (n, v) in enumerate(zip(names, vals)):
        x0 = left + i * plot_w // len(names)
        x1 = left + (i + 1) * plot_w // len(names) - 2
        _, y = ax.px(0, v)
        cv2.rectangle(img, (x0 + 1, int(y)), (x1, bottom - 1), (40, 40, 220) if n in highlight else (200, 130, 50), -1)
        _vertical_text(img, n, ((x0 + x1) // 2, bottom + 6 + name_h // 2 - 4), 0.35)
    if overall_rms:
        _, y = ax.px(0, overall_rms)
        cv2.line(img, (left, int(y)), (left + plot_w, int(y)), RMS_RING, 1)
        _text(img, line_label or f"line: all views, {overall_rms:.3f} px", (left + plot_w, top - 12), color=RMS_RING,
              anchor="right")
    _text(img, "view", (left + plot_w // 2, height - 10), anchor="center")
    return Figure(img, title or f"{camera}: per-view reprojection RMS", "view", y_label, tuple(names), tuple(yl),
                  marks={"overall_rms_px": float(overall_rms or 0.0), "highlighted": len(highlight)})


def _colorbar(img: np.ndarray, x: int, top: int, height: int, vmax: float, label: str,
              cmap: int = cv2.COLORMAP_INFERNO) -> list[str]:
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(14, axis=1)
    img[top:top + height, x:x + 14] = cv2.applyColorMap(ramp, cmap)
    cv2.rectangle(img, (x, top), (x + 14, top + height - 1), INK, 1)
    ticks = [t for t in nice_ticks(0.0, vmax, 5) if t <= vmax + 1e-9]
    labels = [tick_label(t, ticks) for t in ticks]
    for t, s in zip(ticks, labels):
        y = int(round(top + height - 1 - t / vmax * (height - 1)))
        cv2.line(img, (x + 14, y), (x + 18, y), INK, 1)
        _text(img, s, (x + 21, y))
    _vertical_text(img, label, (img.shape[1] - 10, top + height // 2))
    return labels


def coverage_map(heat: np.ndarray, image_size: tuple[int, int], camera: str, title_extra: str = "",
                 width: int = 380) -> Figure:
    """Corner counts per cell over the image (x, y in image pixels), thirds grid, colour bar of counts."""
    heat = np.asarray(heat, np.float32)
    vmax = float(max(1.0, heat.max()))
    W, H = image_size
    h = int(round(width * H / W))
    left, top, bottom_pad, bar_w = 62, 26, 40, 74
    img = np.full((top + h + bottom_pad, left + width + bar_w, 3), 255, np.uint8)
    norm = (255 * heat / vmax).astype(np.uint8)
    img[top:top + h, left:left + width] = cv2.applyColorMap(cv2.resize(norm, (width, h), interpolation=cv2.INTER_NEAREST),
                                                            cv2.COLORMAP_INFERNO)
    for k in (1, 2):
        cv2.line(img, (left + width * k // 3, top), (left + width * k // 3, top + h), (255, 255, 255), 1)
        cv2.line(img, (left, top + h * k // 3), (left + width, top + h * k // 3), (255, 255, 255), 1)
    ax = _Axes(left, top, width, h, (0.0, float(W)), (float(H), 0.0))  # image y grows downwards
    xt = [t for t in nice_ticks(0, W, 5) if t <= W]
    yt = [t for t in nice_ticks(0, H, 4) if t <= H]
    title = f"{camera}: corner coverage" + (f" ({title_extra})" if title_extra else "")
    xl, yl = _frame(img, ax, title, "x (image px)", "y (image px)", xt, yt, grid=False)
    bar = _colorbar(img, left + width + 12, top, h, vmax, "corners per cell")
    return Figure(img, title, "x (image px)", "y (image px)", tuple(xl), tuple(yl), "corners per cell", tuple(bar),
                  marks={"max_count": vmax})
