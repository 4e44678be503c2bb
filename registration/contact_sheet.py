"""A contact sheet (HTML) for a sample of registered frames:
visible | LWIR | overlay | fused | segmentation."""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np

THUMB_WIDTH = 320


def checker_blend(a: np.ndarray, b: np.ndarray, tile: int = 40) -> np.ndarray:
    """Alternate tiles of two same-size RGB images: misregistration shows as broken edges at tile borders."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // tile + xx // tile) % 2).astype(bool)
    out = a.copy()
    out[mask] = b[mask]
    return out


def _thumb(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (THUMB_WIDTH, int(round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)


def correction_plot(frames: list[dict], width: int = 800, height: int = 160) -> str:
    """Inline SVG of the applied correction over the drive (``--refine``): centre dx, dy and the largest
    displacement (px), with the measured (accepted) estimates as dots; ``""`` without refine records."""
    rows = [(f["index"], f["refine"]) for f in frames if isinstance(f.get("refine"), dict)]
    if not rows:
        return ""
    idx = np.array([i for i, _ in rows], float)
    dx = np.array([r["applied"]["centre_px"][0] for _, r in rows])
    dy = np.array([r["applied"]["centre_px"][1] for _, r in rows])
    mx = np.array([r["applied"]["max_px"] for _, r in rows])
    meas = [(i, r["measured"]["max_px"]) for i, r in rows if r.get("estimated") and r.get("accepted")]
    vals = np.concatenate([dx, dy, mx, [m for _, m in meas], [0.0]])
    lo, hi = float(vals.min()), float(vals.max())
    hi = hi if hi - lo > 0.5 else lo + 0.5
    x0, x1 = float(idx.min()), float(max(idx.max(), idx.min() + 1))

    def xy(i, v):
        return f"{40 + (i - x0) / (x1 - x0) * (width - 50):.1f},{10 + (hi - v) / (hi - lo) * (height - 30):.1f}"

    def line(values, colour):
        pts = " ".join(xy(i, v) for i, v in zip(idx, values))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'

    dots = "".join(f'<circle r="2" fill="#999" cx="{xy(i, m).split(",")[0]}" cy="{xy(i, m).split(",")[1]}"/>'
                   for i, m in meas)
    zero = f'<line stroke="#ccc" x1="40" x2="{width - 10}" y1="{xy(x0, 0).split(",")[1]}" y2="{xy(x0, 0).split(",")[1]}"/>'
    labels = (f'<text x="2" y="14" font-size="10">{hi:.1f} px</text>'
              f'<text x="2" y="{height - 20}" font-size="10">{lo:.1f} px</text>'
              f'<text x="40" y="{height - 4}" font-size="10">frame {int(x0)}</text>'
              f'<text x="{width - 80}" y="{height - 4}" font-size="10">frame {int(x1)}</text>')
    return (f'<svg width="{width}" height="{height}" style="border:1px solid #ddd">{zero}{dots}'
            f'{line(mx, "#d62728")}{line(dx, "#1f77b4")}{line(dy, "#2ca02c")}{labels}</svg>'
            '<p><small>LWIR correction applied over the drive (--refine): <span style="color:#d62728">largest '
            'displacement</span>, centre <span style="color:#1f77b4">dx</span> and <span style="color:#2ca02c">dy'
            '</span>; grey dots: accepted per-pair measurements (largest displacement).</small></p>')


def legend_html(labels: dict | None) -> str:
    """The class legend and the labels' provenance (and, where due, the warning that they are unreliable)."""
    if not labels:
        return ""
    swatches = "".join(
        f'<span style="display:inline-block;margin:2px 8px 2px 0"><span style="display:inline-block;width:14px;'
        f'height:14px;vertical-align:middle;border:1px solid #888;background:rgb({",".join(map(str, c["rgb"]))})">'
        f'</span> {c["id"]} {html.escape(c["name"])}</span>' for c in labels["legend"])
    warn = (f'<p style="color:#b00;font-weight:bold">Warning: {html.escape(labels["note"])}</p>'
            if labels.get("note") else "")
    return (f'<h2>Segmentation classes ({html.escape(labels["classes"])})</h2><p>{swatches}</p>'
            f'<p>Labels by {html.escape(labels["weights"])} (sha256 {labels["weights_sha256"][:12]}, '
            f'{html.escape(str(labels.get("model_version")))}), trained on {html.escape(labels["trained_on"])}.</p>{warn}')


def write_contact_sheet(out: Path, frames: list[dict], n: int, geom=None, labels: dict | None = None) -> Path | None:
    """Write ``contact_sheet.html`` and its thumbnails for ``n`` evenly spaced frames; returns the HTML path."""
    if not frames:
        return None
    folder = out / "contact_sheet"
    folder.mkdir(exist_ok=True)
    picks = [frames[int(i)] for i in np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round())]
    has_fusion = (out / "Fusion").is_dir()
    has_labels = (out / "Color").is_dir()
    columns = (["visible", "LWIR", "overlay (checker)"] + (["fused"] if has_fusion else [])
               + (["segmentation"] if has_labels else []))
    rows = []
    for f in picks:
        name = f["file"]
        vis = cv2.imread(str(out / "Visible" / name), cv2.IMREAD_COLOR)
        ir = cv2.imread(str(out / "Infrared" / name), cv2.IMREAD_GRAYSCALE)
        if vis is None or ir is None:
            continue
        ir_col = cv2.applyColorMap(ir, cv2.COLORMAP_INFERNO)
        cells = {"visible": vis, "LWIR": ir_col, "overlay (checker)": checker_blend(vis, ir_col)}
        if has_fusion:
            fused = cv2.imread(str(out / "Fusion" / name), cv2.IMREAD_COLOR)
            if fused is not None:
                cells["fused"] = fused
        if has_labels:
            color = cv2.imread(str(out / "Color" / name), cv2.IMREAD_COLOR)
            if color is not None:
                cells["segmentation"] = cv2.addWeighted(vis, 0.4, color, 0.6, 0)
        links = []
        for col in columns:
            if col not in cells:
                links.append("<td>missing</td>")
                continue
            fname = f"{Path(name).stem}_{col.split()[0].lower()}.jpg"
            cv2.imwrite(str(folder / fname), _thumb(cells[col]), [cv2.IMWRITE_JPEG_QUALITY, 85])
            links.append(f'<td><img src="contact_sheet/{fname}" width="{THUMB_WIDTH}"></td>')
        dt_ms = f.get("dt_ns", 0) / 1e6
        rows.append(f"<tr><th>{html.escape(name)}<br><small>visible #{f['visible']['seq']}, lwir #{f['lwir']['seq']}"
                    f"<br>dt {dt_ms:+.1f} ms</small></th>{''.join(links)}</tr>")
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    crop = f"crop {tuple(round(c, 1) for c in geom.crop)} of the undistorted visible image" if geom is not None else ""
    page = f"""<!doctype html><meta charset="utf-8"><title>rig contact sheet: {html.escape(out.name)}</title>
<style>body{{font-family:sans-serif;margin:1em}} td,th{{padding:3px;vertical-align:top}} img{{display:block}}</style>
<h1>Contact sheet: {html.escape(str(out))}</h1>
<p>{len(frames)} registered frames; {len(rows)} shown. {html.escape(crop)}. In the overlay, tiles alternate between visible
and LWIR: edges that continue across tile borders are registered; parallax grows for objects far from the working plane.</p>
{legend_html(labels)}
{correction_plot(frames)}
<table><tr><th>frame</th>{header}</tr>
{''.join(rows)}
</table>
"""
    path = out / "contact_sheet.html"
    path.write_text(page, encoding="utf-8")
    return path
