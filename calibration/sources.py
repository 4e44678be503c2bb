"""Where calibration views come from: the simulated rig, a recorded session, or image folders.

A source is a :class:`ViewSource`: an ordered list of view names, the cameras
(by role: ``visible``, ``lwir``), and ``load(view, camera)`` returning the image
(8-bit gray/RGB or 16-bit gray) or ``None`` when that camera has no image for
the view. Images are loaded lazily, one at a time; nothing is ever written to
the user's inputs.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from rig.errors import RigError

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp")


@dataclass
class ViewSource:
    """Views of a board by one or two cameras.

    ``loader(view, camera)`` returns the image or ``None``. ``files`` maps
    ``(view, camera)`` to the file an image came from (folders only).
    ``truth``: simulator ground truth per view (sim only), for reports and tests.
    """

    kind: str  # "sim" | "session" | "images"
    description: str
    views: list[str]
    cameras: list[str]
    loader: Callable[[str, str], np.ndarray | None]
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. names without a partner (they still count, alone)
    rig: str | None = None  # the rig the views were taken with, where the source knows it (session, simulator)

    @property
    def kind_label(self) -> str:
        """The real source, for provenance: image folders, a recorded session or the simulator."""
        return {"images": "image folders", "session": "recorded session", "sim": "simulator"}.get(self.kind, self.kind)

    def load(self, view: str, camera: str) -> np.ndarray | None:
        return self.loader(view, camera)


# --------------------------------------------------------------------------- image folders
def parse_images_args(values: list[str]) -> dict[str, Path]:
    """``["visible=DIR", "lwir=DIR"]`` -> ``{"visible": Path, "lwir": Path}`` (validated)."""
    out: dict[str, Path] = {}
    for v in values:
        if "=" not in v:
            raise RigError(f"--images expects CAMERA=DIR (CAMERA is visible or lwir), got '{v}'")
        cam, d = v.split("=", 1)
        if cam not in ("visible", "lwir"):
            raise RigError(f"--images: unknown camera '{cam}' (cameras are named by role: visible, lwir)")
        if cam in out:
            raise RigError(f"--images: camera '{cam}' given twice")
        p = Path(d)
        if not p.is_dir():
            raise RigError("no such image folder", path=p)
        out[cam] = p
    return out


def read_image(path: Path) -> np.ndarray:
    """Read an 8/16-bit PNG/TIFF/JPG/PGM unchanged (colour as RGB); unreadable files raise RigError."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise RigError(f"cannot read image ({exc.strerror})", path=path) from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise RigError("unreadable image (not a PNG/TIFF/JPG/PGM OpenCV can decode)", path=path)
    if img.dtype not in (np.uint8, np.uint16):
        raise RigError(f"unsupported pixel type {img.dtype} (need 8- or 16-bit)", path=path)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        img = np.ascontiguousarray(img[..., ::-1]) if img.shape[2] == 3 else img[..., 0]
    return img


_SEPARATORS = "_-. "


def common_affixes(stems: list[str]) -> tuple[str, str]:
    """``(prefix, suffix)``: the first and the last separated part (``_ - .`` or space) if every name has it, which
    is what a camera adds to its file names (``2019_10_24_15_01_02_left`` -> suffix ``_left``; ``thermal-0001``
    -> prefix ``thermal-``).

    One part only, so shared timestamp parts beyond it stay in the name; with fewer than two names, or where
    stripping would leave a name empty, nothing is shared (``("", "")``).
    """
    if len(stems) < 2:
        return "", ""
    pre = os.path.commonprefix(stems)
    cuts = [i for i, ch in enumerate(pre) if ch in _SEPARATORS]
    pre = pre[:cuts[0] + 1] if cuts else ""
    suf = os.path.commonprefix([x[::-1] for x in stems])[::-1]
    cuts = [i for i, ch in enumerate(suf) if ch in _SEPARATORS]
    suf = suf[cuts[-1]:] if cuts else ""
    if any(len(x) <= len(pre) + len(suf) for x in stems):
        return "", ""
    return pre, suf


def _pairing_keys(listing: dict[str, dict[str, Path]]) -> tuple[dict[str, dict[str, Path]], str]:
    """Two cameras' files keyed so that partners share a key: the file stem, or, where no stem is in both folders,
    the stem without what each folder adds to all its names (``_left`` / ``_thermal``; of the ways to strip the
    shared prefix, suffix or both, the one that pairs the most files). Returns the keyed listing and a note saying
    what was stripped ('' if nothing)."""
    a, b = listing.values()
    if set(a) & set(b):
        return listing, ""
    affixes = {cam: common_affixes(list(stems)) for cam, stems in listing.items()}
    best, best_n, best_how = listing, 0, ""
    for use_pre, use_suf in ((False, True), (True, False), (True, True)):
        keyed, parts = {}, []
        for cam, stems in listing.items():
            pre, suf = affixes[cam]
            pre, suf = (pre if use_pre else ""), (suf if use_suf else "")
            keyed[cam] = {k[len(pre):len(k) - len(suf)]: p for k, p in stems.items()}
            if pre or suf:
                parts.append(f"{cam} '{pre}*{suf}'")
        ka, kb = keyed.values()
        n = len(set(ka) & set(kb))
        if n > best_n:
            best, best_n, best_how = keyed, n, ("pairs matched by file name without what each folder adds to all "
                                                "its names (" + ", ".join(parts) + ")")
    return best, best_how


def folder_source(dirs: dict[str, Path]) -> ViewSource:
    """Views from per-camera image folders, paired by file name (stem).

    Every image counts: a name in one folder only is that camera's view alone
    (its intrinsics), and a note on the source lists such names. One folder
    alone is allowed (intrinsics only). Where no name is in both folders,
    partners are matched without what each folder adds to all its names
    (:func:`common_affixes`: ``<time>_left.jpg`` pairs with ``<time>_thermal.jpg``),
    and a note says so.
    """
    listing: dict[str, dict[str, Path]] = {}
    for cam, d in dirs.items():
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise RigError(f"no images ({', '.join(IMAGE_EXTS)}) in the {cam} folder", path=d)
        stems: dict[str, Path] = {}
        for p in files:
            if p.stem in stems:
                raise RigError(f"two images named '{p.stem}' ({stems[p.stem].name}, {p.name})", path=d)
            stems[p.stem] = p
        listing[cam] = stems
    cams = list(dirs)
    notes = []
    if len(cams) == 2:
        listing, how = _pairing_keys(listing)
        if how:
            notes.append(how)
        a, b = listing[cams[0]], listing[cams[1]]
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        for cam, other, only in ((cams[0], cams[1], only_a), (cams[1], cams[0], only_b)):
            if only:
                notes.append(f"{len(only)} {cam} image(s) without a {other} partner ({_few(only)}): used for the "
                             f"{cam} intrinsics only (pairs are matched by file name)")
        names = sorted(set(a) | set(b))
    else:
        names = sorted(listing[cams[0]])
    files = {(v, c): listing[c][v] for c in cams for v in names if v in listing[c]}

    def load(view: str, camera: str) -> np.ndarray | None:
        p = files.get((view, camera))
        return None if p is None else read_image(p)

    desc = "image folders: " + ", ".join(f"{c}={dirs[c]}" for c in cams)
    return ViewSource("images", desc, names, cams, load, files, notes=notes)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


# --------------------------------------------------------------------------- sessions
def session_source(path: Path, max_views: int = 60) -> ViewSource:
    """Views from a recorded session: time-matched visible/LWIR pairs (or one camera's frames).

    At most ``max_views`` views, evenly spaced over the recording.
    """
    from rig.pixfmt import pixel_format, to_gray8
    from rig.session import SessionReader

    reader = SessionReader(path)
    roles = {s.role: name for name, s in reader.cameras.items()}
    cams = [r for r in ("visible", "lwir") if r in roles]
    if not cams:
        raise RigError("session has no visible or lwir camera", path=path)
    recs: dict[str, dict] = {}
    if len(cams) == 2:
        pairs = reader.pairs(roles["visible"], roles["lwir"])
        items = [(f"{p.a.seq:06d}", {"visible": p.a, "lwir": p.b}) for p in pairs]
    else:
        items = [(f"{r.seq:06d}", {cams[0]: r}) for r in reader.records(roles[cams[0]])]
    if len(items) > max_views:
        idx = np.unique(np.linspace(0, len(items) - 1, max_views).round().astype(int))
        items = [items[i] for i in idx]
    recs = dict(items)

    def load(view: str, camera: str) -> np.ndarray | None:
        rec = recs[view].get(camera)
        if rec is None:
            return None
        img = reader.read(rec)
        if pixel_format(rec.pixel_format).dtype != np.uint8:
            return np.array(img)  # raw 16-bit: the thermal path normalises it robustly
        return to_gray8(img, rec.pixel_format)

    rig_name = (reader.manifest.get("rig") or {}).get("name") if isinstance(reader.manifest, dict) else None
    return ViewSource("session", f"recorded session: {path}", list(recs), cams, load, rig=rig_name)


# --------------------------------------------------------------------------- simulator
_WORKER_RENDERER = None  # one BoardViewRenderer per worker process (its camera-ray and texture caches persist)


def _init_renderer(rig, board, thermal_look) -> None:
    """Process-pool initializer: build this process's renderer once, for all the views it renders."""
    global _WORKER_RENDERER
    from rig.sim import ThermalLook
    from rig.sim import BoardViewRenderer

    _WORKER_RENDERER = BoardViewRenderer(rig, board, thermal_look=thermal_look or ThermalLook())


def _render_view(args) -> tuple[int, dict, dict, float]:
    """Render one view with this process's renderer: ``(index, images, corners, CPU seconds)``."""
    import time

    i, R, t, seed, cameras, perturbations = args
    c0 = time.process_time()
    v = _WORKER_RENDERER.render(R, t, np.random.default_rng(seed), cameras, perturbations)
    return i, v.images, v.corners, time.process_time() - c0


def default_render_workers() -> int:
    """Worker processes for rendering: one per CPU core, at most 4 (rendering is CPU-bound numpy)."""
    return max(1, min(os.cpu_count() or 1, 4))


def sim_source(rig, board, n_views: int = 40, seed: int = 0, cameras: list[str] | None = None,
               workers: int | None = None, thermal_look=None, progress: Callable[[int], None] | None = None,
               poses: list | None = None, stats: dict | None = None) -> ViewSource:
    """Render ``n_views`` board views with the simulated rig, in a process pool.

    ``poses``: rig-frame board poses; default :func:`rig.sim.coverage_pose_plan`
    cycling over the cameras (each view keeps the board inside one camera, so
    each camera's corners reach its image edges; views inside both are joint views).
    Rendering happens up front (``progress(k)`` after each view); images stay in memory.
    ``workers``: processes (default :func:`default_render_workers`; 1 renders in
    this process). Each worker builds one renderer and reuses it for all its
    views (building one costs about a view's time: rays of every pixel, textures).
    ``stats``: if given, filled with ``render_s`` (wall), ``render_cpu_s`` (CPU
    of all processes' rendering) and ``workers``.
    """
    import time

    from rig.sim import coverage_pose_plan

    sim_cams = [c for c in rig.cameras if c.driver == "sim"]
    if not sim_cams:
        raise RigError("the rig has no simulated cameras; give --session or --images", path=rig.source)
    names = [c.name for c in sim_cams if cameras is None or c.role in cameras or c.name in cameras]
    if poses is None:
        poses = coverage_pose_plan(rig, board, n_views, seed=seed, cameras=names)
    n_views = len(poses)
    from rig.sim.views import capture_perturbations

    faults = capture_perturbations(rig, n_views, seed)  # empty dicts unless the rig's sim cameras have faults
    jobs = [(i, R, t, seed * 1000 + i, names, faults[i]) for i, (R, t) in enumerate(poses)]
    workers = max(1, min(workers or default_render_workers(), n_views))
    images: dict[int, dict] = {}
    corners: dict[int, dict] = {}
    t0, cpu = time.perf_counter(), 0.0
    if workers == 1:
        _init_renderer(rig, board, thermal_look)
        c0 = time.process_time()
        results = map(_render_view, jobs)
    else:
        ex = ProcessPoolExecutor(workers, initializer=_init_renderer, initargs=(rig, board, thermal_look))
        results = ex.map(_render_view, jobs)
    try:
        for i, im, co, c in results:
            images[i], corners[i] = im, co
            cpu += c
            if progress:
                progress(1)
    finally:
        if workers == 1:
            global _WORKER_RENDERER
            _WORKER_RENDERER = None
            cpu = time.process_time() - c0  # includes building the renderer
        else:
            ex.shutdown()
    if stats is not None:
        stats.update(render_s=time.perf_counter() - t0, render_cpu_s=cpu, workers=workers)
    role = {c.name: c.role for c in sim_cams}
    view_names = [f"sim{i:03d}" for i in range(n_views)]
    by_name = {f"sim{i:03d}": {role[n]: img for n, img in images[i].items()} for i in range(n_views)}
    truth = {f"sim{i:03d}": {"pose": poses[i], "corners": {role[n]: c for n, c in corners[i].items()},
                             "outlier_deg": max((p.outlier_deg for p in faults[i].values()), default=0.0)}
             for i in range(n_views)}

    def load(view: str, camera: str) -> np.ndarray | None:
        return by_name[view].get(camera)

    cams = [role[n] for n in names]
    return ViewSource("sim", f"simulator: rig '{rig.name}', {n_views} views (seed {seed})", view_names, cams, load,
                      truth=truth, rig=rig.name)
