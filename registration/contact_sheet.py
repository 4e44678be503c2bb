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


def write_contact_sheet(out: Path, frames: list[dict], n: int, geom=None) -> Path | None:
    """Write ``contact_sheet.html`` and its thumbnails for ``n`` evenly spaced frames; returns the HTML path."""
    if not frames:
        return None
    folder = out / "contact_sheet"
    folder.mkdir(exist_ok=True)
    picks = [frames[int(i)] for i in np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round())]
    has_fusion = (out / "Fusion").is_dir()
    columns = ["visible", "LWIR", "overlay (checker)"] + (["fused", "segmentation"] if has_fusion else [])
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
            color = cv2.imread(str(out / "Color" / name), cv2.IMREAD_COLOR)
            if fused is not None and color is not None:
                cells["fused"] = fused
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
<table><tr><th>frame</th>{header}</tr>
{''.join(rows)}
</table>
"""
    path = out / "contact_sheet.html"
    path.write_text(page, encoding="utf-8")
    return path
