"""``calibration.yaml``: the calibration of a rig, its loader and writer, and accumulation over runs.

The schema is documented in ``calibration/SCHEMA.md``. :func:`load_calibration`
validates a file completely; every problem raises
:class:`~rig.errors.RigError` naming the file and the dotted key. Exports to other
tools' formats (Kalibr, OpenCV, ROS) are in :mod:`rig.calibration.exports`.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rig import __version__
from rig.errors import RigError
from rig.yamlio import Node, dump_yaml, load_yaml

FORMAT_NAME = "rig-calibration"
FORMAT_VERSION = 1
CAMERA_MODELS = ("pinhole", "fisheye")


@dataclass(frozen=True)
class CameraCalibration:
    """One camera: ``K`` 3x3, ``dist`` (pinhole: k1 k2 p1 p2 k3 [k4 k5 k6]; fisheye: k1..k4)."""

    name: str
    model: str
    image_size: tuple[int, int]  # (width, height)
    K: np.ndarray
    dist: np.ndarray
    rms_px: float | None = None
    std: dict | None = None  # {"fx","fy","cx","cy": px, "dist": [...]}
    views_used: int | None = None
    board: str | None = None
    fixed: tuple[str, ...] = ()  # distortion terms held at 0 (the views did not determine them)

    def camera_model(self):
        """:class:`rig.camera_model.CameraModel` (pinhole only)."""
        from rig.camera_model import CameraModel

        if self.model != "pinhole":
            raise ValueError("CameraModel covers the pinhole model only")
        return CameraModel(self.K, self.dist, *self.image_size)


@dataclass(frozen=True)
class Extrinsics:
    """``X_to = R @ X_from + t`` (metres). In calibration.yaml: from lwir, to visible."""

    from_camera: str
    to_camera: str
    R: np.ndarray
    t: np.ndarray
    std_rotation_deg: np.ndarray | None = None
    std_translation_m: np.ndarray | None = None
    rms_px: float | None = None
    epipolar_px: dict | None = None
    inconsistent_pairs: tuple[dict, ...] = ()  # {view, rotation_deg, translation_mm}: left out of the extrinsics
    consistency: dict | None = None  # {pairs_checked, pairs_used, k_mad, rotation_threshold_deg, translation_threshold_mm}


@dataclass(frozen=True)
class Homography:
    """``H`` maps undistorted LWIR pixels to undistorted visible pixels (homogeneous, ``H[2,2] = 1``)."""

    from_camera: str
    to_camera: str
    H: np.ndarray
    plane_distance_m: float
    method: str  # "plane" (plane-induced at plane_distance_m) | "ransac"
    plane_source: str = "rig"  # "rig" | "data" | "user"
    plane_normal: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    held_out: dict | None = None
    parallax_px: dict | None = None
    alternatives: dict | None = None  # other method name -> H


@dataclass(frozen=True)
class Registration:
    """The output crop: ``crop = (x, y, w, h)`` in undistorted visible pixels, scaled to ``output_size``."""

    output_size: tuple[int, int]
    crop: tuple[float, float, float, float]

    @property
    def scale(self) -> float:
        """Output pixels per undistorted visible pixel."""
        return self.output_size[0] / self.crop[2]


@dataclass(frozen=True)
class Calibration:
    """Everything registration needs, plus where it came from."""

    cameras: dict[str, CameraCalibration]
    extrinsics: Extrinsics | None = None
    homography: Homography | None = None
    registration: Registration | None = None
    provenance: dict = field(default_factory=dict)
    source: Path | None = None

    def camera(self, name: str) -> CameraCalibration:
        try:
            return self.cameras[name]
        except KeyError:
            raise RigError(f"camera '{name}' is not calibrated (calibrated: {', '.join(self.cameras) or 'none'})",
                           path=self.source, key="cameras") from None


# --------------------------------------------------------------------------- writing
def _m(a) -> list:
    return np.round(np.asarray(a, np.float64), 12).tolist()


def _f(x):
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else x


def _fl(a):
    return None if a is None else [_f(x) for x in np.ravel(a)]


def to_dict(cal: Calibration) -> dict:
    """The calibration as plain data (the calibration.yaml document)."""
    doc: dict = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "cameras": {}}
    for name, c in cal.cameras.items():
        entry = {"model": c.model, "image_size": list(map(int, c.image_size)), "K": _m(c.K), "dist": _m(c.dist),
                 "rms_px": _f(c.rms_px)}
        if c.std is not None:
            entry["std"] = {k: (_fl(v) if isinstance(v, (list, np.ndarray)) else _f(v)) for k, v in c.std.items()}
        if c.views_used is not None:
            entry["views_used"] = int(c.views_used)
        if c.board:
            entry["board"] = c.board
        if c.fixed:
            entry["fixed"] = list(c.fixed)
        doc["cameras"][name] = entry
    if (e := cal.extrinsics) is not None:
        doc["extrinsics"] = {"from": e.from_camera, "to": e.to_camera, "R": _m(e.R), "t": _m(np.ravel(e.t)),
                             "std": {"rotation_deg": _fl(e.std_rotation_deg), "translation_m": _fl(e.std_translation_m)},
                             "rms_px": _f(e.rms_px), "epipolar_px": e.epipolar_px}
        if e.consistency is not None:
            doc["extrinsics"]["consistency"] = {k: (_f(v) if isinstance(v, float) else v) for k, v in e.consistency.items()}
            doc["extrinsics"]["inconsistent_pairs"] = [
                {"view": str(p["view"]), "rotation_deg": _f(p["rotation_deg"]), "translation_mm": _f(p["translation_mm"])}
                for p in e.inconsistent_pairs]
    if (h := cal.homography) is not None:
        doc["homography"] = {"from": h.from_camera, "to": h.to_camera, "coordinates": "undistorted",
                             "H": _m(h.H), "plane_distance_m": _f(h.plane_distance_m), "method": h.method,
                             "plane_source": h.plane_source, "plane_normal": _m(h.plane_normal)}
        if h.held_out:
            doc["homography"]["held_out"] = h.held_out
        if h.parallax_px:
            doc["homography"]["parallax_px"] = {("inf" if math.isinf(k) else float(k)): v for k, v in h.parallax_px.items()}
        if h.alternatives:
            doc["homography"]["alternatives"] = {k: _m(v) for k, v in h.alternatives.items()}
    if (r := cal.registration) is not None:
        doc["registration"] = {"output_size": list(map(int, r.output_size)), "crop": [float(x) for x in r.crop],
                               "coordinates": "undistorted visible pixels: x, y, width, height"}
    doc["provenance"] = cal.provenance
    return doc


HEADER = ("# rig calibration (schema: calibration/SCHEMA.md in the rig sources).\n"
          "# homography.H maps UNDISTORTED lwir pixels to UNDISTORTED visible pixels;\n"
          "# extrinsics: X_visible = R @ X_lwir + t (metres).\n")


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write calibration.yaml atomically (write a temporary file, then rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(HEADER + dump_yaml(to_dict(cal)), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise RigError(f"cannot write ({exc.strerror})", path=path) from None
    return path


# --------------------------------------------------------------------------- reading
def _matrix(node: Node, rows: int, cols: int) -> np.ndarray:
    items = node.items()
    if len(items) != rows:
        raise node.error(f"expected a {rows}x{cols} matrix ({rows} rows), got {len(items)} rows")
    return np.array([it.floats(cols) for it in items], np.float64)


def load_calibration(path: str | Path) -> Calibration:
    """Load and validate calibration.yaml."""
    path = Path(path)
    root = Node(load_yaml(path), path).mapping()
    root.reject_unknown({"format", "version", "cameras", "extrinsics", "homography", "registration", "provenance"})
    if root.req("format").str() != FORMAT_NAME:
        raise root.error(f"not a {FORMAT_NAME} file", "format")
    version = root.req("version").int()
    if version > FORMAT_VERSION:
        raise root.error(f"calibration format version {version} is newer than this rig ({FORMAT_VERSION}); upgrade rig", "version")
    cams = {}
    cn = root.req("cameras").mapping()
    for name in cn.data:
        c = cn.child(str(name)).mapping()
        c.reject_unknown({"model", "image_size", "K", "dist", "rms_px", "std", "views_used", "board", "fixed"})
        model = c.req("model").str(CAMERA_MODELS)
        w, h = c.req("image_size").ints(2, lo=1)
        K = _matrix(c.req("K"), 3, 3)
        if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1.0) > 1e-9 or np.abs(K[2, :2]).max() > 0 or abs(K[1, 0]) > 0:
            raise c.error("not a camera matrix (need fx, fy > 0 and rows [fx s cx], [0 fy cy], [0 0 1])", "K")
        dist = np.array(c.req("dist").floats(choices_n=(4, 5, 8) if model == "pinhole" else (4,)))
        rms = c.child("rms_px").float(0.0) if c.has("rms_px") else None
        std = c.child("std").mapping().data if c.has("std") else None
        views = c.child("views_used").int(lo=0) if c.has("views_used") else None
        board = c.child("board").str() if c.has("board") else None
        fixed = ()
        if c.has("fixed"):
            names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
            fixed = tuple(it.str(names) for it in c.child("fixed").items())
        cams[str(name)] = CameraCalibration(str(name), model, (w, h), K, dist, rms, std, views, board, fixed)
    ext = None
    if (e := root.opt("extrinsics")) is not None:
        e.reject_unknown({"from", "to", "R", "t", "std", "rms_px", "epipolar_px", "consistency", "inconsistent_pairs"})
        fr, to = e.req("from").str(), e.req("to").str()
        for key, cam in (("from", fr), ("to", to)):
            if cam not in cams:
                raise e.error(f"camera '{cam}' is not under 'cameras'", key)
        R = _matrix(e.req("R"), 3, 3)
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
            raise e.error("not a rotation matrix", "R")
        t = np.array(e.req("t").floats(3))
        std = e.child("std").data if e.has("std") else {}
        std = std if isinstance(std, dict) else {}
        ext = Extrinsics(fr, to, R, t,
                         np.array(std["rotation_deg"], float) if std.get("rotation_deg") else None,
                         np.array(std["translation_m"], float) if std.get("translation_m") else None,
                         e.child("rms_px").float(0.0) if e.has("rms_px") else None,
                         e.child("epipolar_px").data if e.has("epipolar_px") else None,
                         _inconsistent_pairs(e), e.child("consistency").mapping().data if e.has("consistency") else None)
    hom = None
    if (h := root.opt("homography")) is not None:
        h.reject_unknown({"from", "to", "coordinates", "H", "plane_distance_m", "method", "plane_source", "plane_normal",
                          "held_out", "parallax_px", "alternatives"})
        fr, to = h.req("from").str(), h.req("to").str()
        if (fr, to) != ("lwir", "visible"):
            raise h.error(f"expected from: lwir, to: visible, got from: {fr}, to: {to}", "from")
        if h.has("coordinates") and h.child("coordinates").str() != "undistorted":
            raise h.error("only 'undistorted' pixel coordinates are supported", "coordinates")
        H = _matrix(h.req("H"), 3, 3)
        if abs(np.linalg.det(H)) < 1e-12:
            raise h.error("singular homography", "H")
        d_node = h.req("plane_distance_m")
        d = float("inf") if d_node.data in ("inf", ".inf") or (isinstance(d_node.data, float) and math.isinf(d_node.data)) \
            else d_node.float(0.0, open_lo=True)
        method = h.req("method").str(("plane", "ransac"))
        src = h.child("plane_source").str(("rig", "data", "user")) if h.has("plane_source") else "rig"
        normal = np.array(h.child("plane_normal").floats(3)) if h.has("plane_normal") else np.array([0.0, 0.0, 1.0])
        alts = None
        if h.has("alternatives"):
            an = h.child("alternatives").mapping()
            alts = {str(k): _matrix(an.child(str(k)), 3, 3) for k in an.data}
        par = None
        if h.has("parallax_px"):
            par = {float(k): v for k, v in h.child("parallax_px").mapping().data.items()}
        hom = Homography(fr, to, H / H[2, 2], d, method, src, normal,
                         h.child("held_out").data if h.has("held_out") else None, par, alts)
    reg = None
    if (r := root.opt("registration")) is not None:
        r.reject_unknown({"output_size", "crop", "coordinates"})
        ow, oh = r.req("output_size").ints(2, lo=1)
        crop = r.req("crop").floats(4)
        if crop[2] <= 0 or crop[3] <= 0:
            raise r.error("crop width and height must be > 0", "crop")
        reg = Registration((ow, oh), tuple(crop))
    prov = root.child("provenance").data if root.has("provenance") else {}
    return Calibration(cams, ext, hom, reg, prov if isinstance(prov, dict) else {}, path)


def _inconsistent_pairs(e: Node) -> tuple[dict, ...]:
    """``extrinsics.inconsistent_pairs``: a list of {view, rotation_deg, translation_mm}."""
    if not e.has("inconsistent_pairs"):
        return ()
    out = []
    for it in e.child("inconsistent_pairs").items():
        m = it.mapping()
        m.reject_unknown({"view", "rotation_deg", "translation_mm"})
        out.append({"view": m.req("view").str(), "rotation_deg": m.req("rotation_deg").float(0.0),
                    "translation_mm": m.req("translation_mm").float(0.0)})
    return tuple(out)


# --------------------------------------------------------------------------- accumulation
def merge(old: Calibration | None, new: Calibration, run: dict) -> Calibration:
    """Accumulate: cameras calibrated now replace old ones; other parts are kept unless recomputed.

    When a camera's intrinsics change and the joint results were not recomputed,
    the old extrinsics/homography/registration no longer match: they are
    dropped (and a note goes into provenance).
    """
    cams = dict(old.cameras) if old else {}
    cams.update(new.cameras)
    ext, hom, reg = new.extrinsics, new.homography, new.registration
    notes = []
    if old is not None and ext is None:
        if old.extrinsics is not None and not (set(new.cameras) & {old.extrinsics.from_camera, old.extrinsics.to_camera}):
            ext, hom, reg = old.extrinsics, old.homography, old.registration
        elif old.extrinsics is not None:
            notes.append("previous extrinsics/homography dropped: intrinsics changed without a new joint calibration")
    runs = list((old.provenance.get("runs") if old and isinstance(old.provenance.get("runs"), list) else []))
    runs.append({**run, **({"notes": notes} if notes else {})})
    prov = {"software": f"rig {__version__}", "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "runs": runs}
    return replace(new, cameras=cams, extrinsics=ext, homography=hom, registration=reg, provenance=prov)
