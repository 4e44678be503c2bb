"""``rig register`` / ``rig register-and-fuse``: a session -> a registered FMB-style data set.

Steps per pair: read both raw frames from the session, demosaic the visible one,
``cv2.remap`` both through the registration tables (undistort + homography +
crop + resize in one interpolation), write ``Visible/``, ``Infrared/``,
``Infrared16/``; with fusion, run SegMiF on batches and write ``Fusion/``,
``Label/``, ``Color/``.

Parallelism: a thread pool decodes, warps and PNG-encodes (OpenCV releases the
GIL), while the calling thread runs model inference on the frames already
prepared, so the stages overlap. The calling thread collects finished frames
oldest first and logs them, so ``frames.jsonl`` is in frame order. With
``--refine`` (and no fusion), a thread writes ``Visible/`` ahead while the
correction is estimated: the estimator holds the GIL much of its time, and the
visible images do not depend on the correction.

Options (``--every``, the device, the weights) are checked before the session
is read; the manifest names the weights by file, path and sha256.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rig.errors import RigError
from rig.pixfmt import to_rgb
from rig.registration.dataset import (FAST_PNG, FUSE_DIRS, REGISTER_DIRS, OutputDataset, file_sha256, frame_name,
                                     write_png)
from rig.registration.geometry import RegistrationGeometry, RemapTables, coverage, remap_tables
from rig.registration.parallax import baseline_parallax
from rig.registration.correction import ExtendedLwirTable, RefineSettings, estimate_track, is_identity
from rig.registration.resample import Resampler, nearest, resample
from rig.session import FrameFlags, Pair, SessionReader


FUSION_METHODS = ("segmif", "average", "max", "laplacian")


@dataclass(frozen=True)
class RegisterOptions:
    out: Path | None = None  # default: next to the session, "<name>-fmb"
    calibration: Path | None = None  # default: the session's calibration reference, then the rig's
    workers: int = 2
    every: int = 1
    force: bool = False
    fuse: bool = False
    device: str = "cpu"
    model_path: Path | None = None
    batch_size: int = 2
    min_free_bytes: int = 256 << 20
    contact_sheet_frames: int = 8
    output_size: tuple[int, int] | None = None  # default: the calibration's
    refine: RefineSettings | None = None  # --refine: per-pair targetless correction (rig.registration.correction)
    fusion: str = "segmif"  # register-and-fuse: segmif (fuse + segment) or a classical baseline (fusion only)
    segmentation: bool = True  # with fusion "segmif": False fuses with the model but skips the segmentation head


@dataclass
class RegisterResult:
    out: Path
    total_pairs: int = 0
    written: int = 0
    already_done: int = 0
    skipped_ffc: int = 0
    unpaired: dict = field(default_factory=dict)
    corrupt: list = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    status: str = "complete"
    contact_sheet: Path | None = None
    refine: dict | None = None  # the manifest's refine summary (with --refine)
    labels_note: str = ""  # set when the labels are not to be trusted (e.g. weights trained on the simulator only)

    @property
    def pairs_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Job:
    index: int
    pair: Pair


@dataclass
class _Prepared:
    job: _Job
    visible: np.ndarray | None  # RGB uint8; None when Visible/ was written ahead (register without fusion)
    ir16: np.ndarray
    ir8: np.ndarray


class _StageClock:
    """Seconds per stage, summed over threads."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, dt: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt


def find_calibration(reader: SessionReader, explicit: Path | None) -> Path:
    """``--calibration``, else the session's own calibration, else the rig's (the rig file's ``calibration:``).

    The manifest's reference must lie inside the session (:meth:`SessionReader.calibration_path`);
    the rig's calibration is the one place outside it that is looked at, and only as named by the
    rig file the session was recorded with.
    """
    if explicit is not None:
        if not Path(explicit).is_file():
            raise RigError("calibration file not found", path=explicit)
        return Path(explicit)
    candidates = []
    ref = reader.calibration_path()  # confined to the session: '../x.yaml' or '/etc/passwd' are refused
    if ref is not None:
        candidates.append(ref)
    rig_file = reader.path / "rig.yaml"
    if rig_file.is_file():
        from rig.rigconfig import load_rig

        try:
            rig = load_rig(rig_file)
            if rig.calibration is not None:
                candidates.append(Path(rig.calibration))
                if Path(rig.calibration).is_relative_to(reader.path):
                    # The session keeps a copy of the rig file; a relative path in it meant the user's
                    # folder (or, for a shipped rig, the working directory), not the session.
                    candidates.append(Path(rig.calibration).relative_to(reader.path))
        except RigError:
            pass
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates) or "nowhere (the session names no calibration)"
    raise RigError(f"no calibration found (looked at: {looked}); pass --calibration FILE or run "
                   "'rig calibrate --board ir_board.yaml' first", path=reader.path)


def check_compatible(cal, reader: SessionReader, cal_path: Path) -> None:
    """The calibration must be for this rig's cameras at this resolution."""
    for role in ("visible", "lwir"):
        stream = next((s for s in reader.cameras.values() if s.role == role), None)
        if stream is None:
            raise RigError(f"session has no {role} camera (cameras: {', '.join(reader.cameras)})", path=reader.path)
        cam = cal.cameras.get(role)
        if cam is None:
            continue  # RegistrationGeometry reports what is missing
        if tuple(cam.image_size) != (stream.width, stream.height):
            raise RigError(f"calibrated for a {cam.image_size[0]}x{cam.image_size[1]} {role} camera, but the session's is "
                           f"{stream.width}x{stream.height}: a calibration for another rig or resolution", path=cal_path)
    runs = cal.provenance.get("runs") if isinstance(cal.provenance, dict) else None
    rig_names = {r.get("rig") for r in runs or [] if isinstance(r, dict) and r.get("rig")}
    session_rig = (reader.manifest.get("rig") or {}).get("name")
    if rig_names and session_rig and session_rig not in rig_names:
        raise RigError(f"calibrated for rig '{', '.join(sorted(rig_names))}', but the session was recorded with "
                       f"rig '{session_rig}'", path=cal_path)


def select_pairs(reader: SessionReader, every: int) -> tuple[list[_Job], int, dict]:
    """Pairs to register, numbered stably; FFC-flagged pairs skipped and counted."""
    vis = next(n for n, s in reader.cameras.items() if s.role == "visible")
    ir = next(n for n, s in reader.cameras.items() if s.role == "lwir")
    pairs = reader.pairs(vis, ir)
    unpaired = {vis: len(reader.unpaired(vis, pairs)), ir: len(reader.unpaired(ir, pairs))}
    jobs, ffc = [], 0
    for i, p in enumerate(pairs):
        if (p.a.flags | p.b.flags) & FrameFlags.FFC:
            ffc += 1
            continue
        if i % every == 0:
            jobs.append(_Job(i, p))
    return jobs, ffc, unpaired


def infrared_range(reader: SessionReader, jobs: list[_Job], tables: RemapTables, samples: int = 16) -> tuple[int, int]:
    """Session-wide [lo, hi] counts for the 8-bit infrared images (1st/99.5th percentiles of a sample)."""
    picks = [jobs[int(i)] for i in np.linspace(0, len(jobs) - 1, min(samples, len(jobs)))]
    values = []
    for job in picks:
        try:
            img = reader.read(job.pair.b)
        except RigError:
            continue
        warped = nearest(img, tables.lwir_x, tables.lwir_y)
        values.append(warped[::4, ::4].ravel())
    if not values:
        return 0, 65535
    lo, hi = np.percentile(np.concatenate(values), [1.0, 99.5])
    return int(lo), int(max(hi, lo + 1))


def register_session(session: str | Path, options: RegisterOptions = RegisterOptions(), progress=None) -> RegisterResult:
    """Register (and optionally fuse and segment) every usable pair of a session.

    ``progress(advance, total=None)`` is called once with the number of pairs to
    do (``advance=0``), then with ``1`` per finished pair.
    """
    from rig.calibration.results import load_calibration

    t_start = time.perf_counter()
    if options.every < 1:
        raise RigError(f"--every must be >= 1, got {options.every}")
    model = weights = None
    if options.fusion not in FUSION_METHODS:
        raise RigError(f"--fusion must be one of {', '.join(FUSION_METHODS)}, got {options.fusion!r}")
    if options.fuse and options.fusion == "segmif":  # the device and the weights are checked before any session work
        model, weights = load_fusion_model(options.model_path, options.device)
    reader = SessionReader(session)
    try:
        return _run(reader, options, progress, t_start, load_calibration, model, weights)
    finally:
        reader.close()


@dataclass(frozen=True)
class WeightsRecord:
    """Which weights made ``Fusion/``, ``Label/``, ``Color/`` (manifest ``model``)."""

    name: str  # file name, e.g. segmif_cpu.pt
    path: str  # absolute path of the file used
    sha256: str
    bundled: bool  # the weights shipped with rig (no --model)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "bundled": self.bundled}


def label_provenance(weights: WeightsRecord) -> dict:
    """What the labels in ``Label/``/``Color/`` are: class set, legend, the weights, and whether to trust them.

    Weights whose segmentation was trained on simulated scenes only (the bundled ones, or a
    checkpoint whose ``training_data`` lists no real labelled set) are flagged as unreliable
    on real data; imported reference weights (trained on FMB / MFNet) are not.
    """
    from rig.model.checkpoint import read_checkpoint
    from rig.model.classes import get_class_set

    ckpt = read_checkpoint(weights.path)
    classes = ckpt["config"].get("classes", "fmb")
    cs = get_class_set(classes)
    training = ckpt.get("training_data")
    provenance = ckpt.get("provenance") or {}
    if provenance.get("source", "").endswith("SegMiF"):
        trained_on = f"{'FMB' if classes == 'fmb' else 'MFNet'} (the SegMiF authors' published weights)"
        reliable = True
    elif training:
        real = [d for d in training if d.get("labelled") and d.get("kind") != "simulator"]
        trained_on = ", ".join(str(d.get("name", d.get("kind", "?"))) for d in training)
        reliable = bool(real)
    else:  # the bundled weights (model card): segmentation labels from simulator scenes only
        trained_on = "simulator scenes only" if weights.bundled else "unknown (the checkpoint does not say)"
        reliable = False
    note = ("" if reliable else
            "segmentation trained on simulated scenes only: labels are not reliable on real data "
            "(a pre-annotation at best; see rig labels export-cvat)")
    return {"classes": classes, "legend": [{"id": i, "name": n, "rgb": list(c)}
                                           for i, (n, c) in enumerate(zip(cs.names, cs.palette))],
            "weights": weights.name, "weights_sha256": weights.sha256, "model_version": ckpt.get("model_version"),
            "trained_on": trained_on, "reliable_on_real_data": reliable, "note": note}


def load_fusion_model(model_path: Path | None, device: str):
    """Load the weights on ``device`` (checked first: an absent GPU fails at once).

    Returns ``(model, WeightsRecord)``; ``model_path=None`` means the bundled weights.
    """
    from rig.model import bundled_weights_path, load_model

    path = Path(model_path) if model_path is not None else bundled_weights_path()
    model = load_model(path, device=device)
    return model, WeightsRecord(path.name, str(path.resolve()), file_sha256(path), model_path is None)


def _run(reader: SessionReader, o: RegisterOptions, progress, t_start: float, load_calibration, model,
         weights: WeightsRecord | None) -> RegisterResult:
    cal_path = find_calibration(reader, o.calibration)
    cal = load_calibration(cal_path)
    check_compatible(cal, reader, cal_path)
    geom = RegistrationGeometry.from_calibration(cal, o.output_size)
    jobs, skipped_ffc, unpaired = select_pairs(reader, o.every)
    if not jobs:
        counts = ", ".join(f"{n} {len(reader.records(n))} frames" for n in reader.cameras)
        raise RigError(f"session has no usable visible/LWIR pairs ({counts}; {skipped_ffc} pairs during FFC)",
                       path=reader.path)
    out = Path(o.out) if o.out else reader.path.parent / f"{reader.path.name}-fmb"
    tables = remap_tables(geom)
    resampler = Resampler.from_tables(tables)
    identity = {
        "session": str(reader.path.resolve()),
        "session_started_wall_ns": reader.manifest.get("started_wall_ns"),
        "calibration_sha256": file_sha256(cal_path),
        "output_size": list(geom.output_size),
        "every": o.every,
        "model": weights.sha256 if weights else None,
    }
    if o.fuse and o.fusion != "segmif":
        identity["fusion"] = o.fusion
    if o.fuse and o.fusion == "segmif" and not o.segmentation:
        identity["segmentation"] = False
    if o.refine is not None:
        identity["refine"] = o.refine.identity()
    ds = OutputDataset(out, identity)
    segment = o.fuse and o.fusion == "segmif" and o.segmentation
    done = ds.open(o.force, REGISTER_DIRS + (FUSE_DIRS if segment else ("Fusion",) if o.fuse else ()))
    result = RegisterResult(out, total_pairs=len(jobs), skipped_ffc=skipped_ffc, unpaired=unpaired)
    ir_range = tuple(ds.manifest.get("infrared_8bit", {}).get("range_counts", ())) or infrared_range(reader, jobs, tables)
    cov_v, cov_l = coverage(tables, geom)
    ds.write_manifest(
        status="running", session=identity["session"], calibration=str(Path(cal_path).resolve()),
        calibration_sha256=identity["calibration_sha256"], model=weights.to_dict() if weights else None,
        output_size=list(geom.output_size), crop_visible_undistorted_px=list(geom.crop),
        infrared_8bit={"range_counts": list(map(int, ir_range)),
                       "mapping": "linear: 0 at range_counts[0], 255 at range_counts[1], clipped; bilinear warp"},
        infrared_16bit="raw counts, nearest-neighbour warp (values bit-exact)",
        resampling={"method": "Gaussian prefilter of sigma 0.5 output px where downsampled, then one bilinear remap",
                    **resampler.as_dict()},
        coverage={"visible": cov_v, "lwir": cov_l},
        counts={"pairs": len(jobs), "skipped_ffc": skipped_ffc, "unpaired": unpaired},
        fusion=(o.fusion if o.fuse else None),
        labels=label_provenance(weights) if segment else None,
    )
    result.labels_note = (ds.manifest.get("labels") or {}).get("note", "")
    todo = [j for j in jobs if j.index not in done]
    result.already_done = len(jobs) - len(todo)
    clock = _StageClock()
    lo, hi = ir_range
    track = ext = None
    visible_done: set[int] = set()  # frames whose Visible/ image is written (ahead, during the estimate pass)
    position = {j.index: k for k, j in enumerate(jobs)}
    if o.refine is not None and todo:
        # The whole drive is estimated (also on a resume): smoothing needs every frame's neighbours.
        parallax = (baseline_parallax(geom, cal.extrinsics.R, cal.extrinsics.t)
                    if o.refine.parallax == "baseline" and cal.extrinsics is not None else None)
        # The estimate pass keeps about 1.3 of 2 cores busy (the estimator holds the GIL much of its time); the
        # Visible/ images do not depend on the correction, so a thread writes them ahead in the idle time.
        stop_ahead = threading.Event()
        ahead = (threading.Thread(target=write_visible_ahead, name="register-visible-ahead", daemon=True,
                                  args=(reader, todo, tables, resampler, out, o.min_free_bytes, stop_ahead,
                                        visible_done, clock))
                 if not o.fuse else None)
        if ahead is not None:
            ahead.start()
        try:
            track = estimate_track(reader, jobs, geom, (lo, hi), o.refine, o.workers, clock, parallax)
        finally:
            stop_ahead.set()
            if ahead is not None:
                ahead.join()
        if not all(is_identity(h, geom.output_size) for h in track.H):  # a static rig needs no corrected tables
            ext = ExtendedLwirTable.from_geometry(geom, max(o.refine.margin_px, int(math.ceil(o.refine.max_shift_px)) + 2))
        result.refine = track.summary(geom.output_size)
        result.refine["baseline_parallax"] = None if parallax is None else parallax.as_dict()
        ds.write_manifest(refine={**o.refine.identity(), **result.refine})
    if progress:
        progress(0, total=len(todo))
    gain = 255.0 / (hi - lo)
    stop_reason: str | None = None

    def prepare(job: _Job) -> _Prepared | None:
        t0 = time.perf_counter()
        try:
            raw_v = None if job.index in visible_done else reader.read(job.pair.a)
            raw_l = reader.read(job.pair.b)
        except RigError as exc:
            result.corrupt.append({"index": job.index, "problem": str(exc)})
            return None
        t1 = time.perf_counter()
        vis = None if raw_v is None else registered_visible(raw_v, job.pair.a.pixel_format, tables, resampler)
        lx, ly = tables.lwir_x, tables.lwir_y
        if ext is not None and not is_identity(track.H[position[job.index]], geom.output_size):
            lx, ly = ext.corrected(track.H[position[job.index]], geom.output_size)  # T o C^-1: still one remap
        ir16 = nearest(raw_l, lx, ly)
        irf = resample(raw_l.astype(np.float32), lx, ly, resampler.sigma_lwir)
        ir8 = np.clip((irf - lo) * gain + 0.5, 0, 255).astype(np.uint8)
        t2 = time.perf_counter()
        clock.add("read", t1 - t0)
        clock.add("warp", t2 - t1)
        return _Prepared(job, vis, ir16, ir8)

    def write(p: _Prepared, fused: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict:
        """Write one frame's files; returns its ``frames.jsonl`` entry (logged by the caller, in frame order)."""
        t0 = time.perf_counter()
        name = frame_name(p.job.index)
        if shutil.disk_usage(out).free < o.min_free_bytes:
            raise _DiskFull()
        if p.visible is not None:  # None: written ahead (write_visible_ahead)
            write_visible(out, name, p.visible)
        write_png(out / "Infrared" / name, p.ir8, FAST_PNG)  # textured 8-bit: Huffman beats run-length
        write_png(out / "Infrared16" / name, p.ir16)
        if fused is not None:
            from rig.model import colorize

            write_png(out / "Fusion" / name, cv2.cvtColor(fused, cv2.COLOR_RGB2BGR))
            if labels is not None:
                write_png(out / "Label" / name, labels)
                write_png(out / "Color" / name, cv2.cvtColor(colorize(labels), cv2.COLOR_RGB2BGR))
        a, b = p.job.pair.a, p.job.pair.b
        clock.add("encode+write", time.perf_counter() - t0)
        entry = {"index": p.job.index, "file": name,
                 "visible": {"seq": a.seq, "frame_counter": a.frame_counter, "host_ns": a.host_ns, "wall_ns": a.wall_ns},
                 "lwir": {"seq": b.seq, "frame_counter": b.frame_counter, "host_ns": b.host_ns, "wall_ns": b.wall_ns},
                 "dt_ns": b.host_ns - a.host_ns}
        if track is not None:
            entry["refine"] = track.frame_record(position[p.job.index], geom.output_size)
        return entry

    def prepare_and_write(job: _Job) -> dict | None:
        p = prepare(job)
        if p is None:
            return None
        if o.fuse:  # a classical baseline: fusion only, on the worker thread
            from rig.model.baselines import fuse_baseline

            return write(p, fuse_baseline(p.visible, p.ir8, o.fusion))
        return write(p)

    workers = max(1, o.workers)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="register") as pool:
            if model is None:
                pending: deque[Future] = deque()
                for job in todo:
                    pending.append(pool.submit(prepare_and_write, job))
                    while len(pending) >= 2 * workers:
                        result.written += _collect(pending.popleft(), ds, progress)
                while pending:
                    result.written += _collect(pending.popleft(), ds, progress)
            else:
                result.written += _fuse_loop(todo, pool, prepare, write, model, o, clock, ds, progress)
    except _DiskFull:
        stop_reason = (f"stopped: less than {o.min_free_bytes >> 20} MiB free on the output disk; "
                       "free space and rerun the same command to resume")
    except OSError as exc:
        if exc.errno != 28:  # ENOSPC
            raise
        stop_reason = "stopped: the output disk is full; free space and rerun the same command to resume"
    finally:
        ds.close()
    result.seconds = time.perf_counter() - t_start
    result.stage_seconds = dict(clock.seconds)
    result.status = "complete" if stop_reason is None else "stopped"
    if stop_reason is None and o.contact_sheet_frames > 0:
        from rig.registration.contact_sheet import write_contact_sheet

        t0 = time.perf_counter()
        result.contact_sheet = write_contact_sheet(out, ds.frames(), o.contact_sheet_frames, geom,
                                                   labels=ds.manifest.get("labels"))
        result.stage_seconds["contact sheet"] = time.perf_counter() - t0
    ds.write_manifest(status=result.status if stop_reason is None else stop_reason,
                      counts={"pairs": len(jobs), "written_total": len(ds.completed()), "skipped_ffc": skipped_ffc,
                              "unpaired": unpaired, "corrupt": result.corrupt})
    if stop_reason is not None:
        raise RigError(f"{stop_reason} ({len(ds.completed())} of {len(jobs)} frames done)", path=out)
    return result


class _DiskFull(Exception):
    pass


def registered_visible(raw: np.ndarray, pixel_format: str, tables: RemapTables, resampler: Resampler) -> np.ndarray:
    """A raw visible frame as its ``Visible/`` image (RGB): demosaiced, prefiltered where downsampled, one remap."""
    return resample(to_rgb(raw, pixel_format), tables.visible_x, tables.visible_y, resampler.sigma_visible)


def write_visible(out: Path, name: str, rgb: np.ndarray) -> None:
    write_png(out / "Visible" / name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_visible_ahead(reader: SessionReader, todo: list[_Job], tables: RemapTables, resampler: Resampler, out: Path,
                        min_free_bytes: int, stop: threading.Event, done: set[int], clock: _StageClock) -> None:
    """Write ``Visible/`` images in frame order until ``stop`` is set, adding each written frame to ``done``.

    Best effort: a frame it cannot read or write is left to the main pass, which reports it (corrupt frame,
    full disk) as it would without this. A frame counts as done only once its file is in place, and is logged
    in ``frames.jsonl`` only with its other files, so an interrupted run resumes as before."""
    for job in todo:
        if stop.is_set():
            return
        t0 = time.perf_counter()
        try:
            raw = reader.read(job.pair.a)
        except RigError:
            continue
        vis = registered_visible(raw, job.pair.a.pixel_format, tables, resampler)
        t1 = time.perf_counter()
        try:
            if shutil.disk_usage(out).free < min_free_bytes:
                return
            write_visible(out, frame_name(job.index), vis)
        except (OSError, RigError):
            return
        done.add(job.index)
        clock.add("warp", t1 - t0)
        clock.add("encode+write", time.perf_counter() - t1)


def _collect(fut: Future, ds: OutputDataset, progress) -> int:
    """Wait for the oldest frame (futures are collected in submission order, so the log stays in frame order),
    log it once its files are in place; returns 1 if it was written, 0 for a corrupt pair."""
    entry = fut.result()
    if entry is not None:
        ds.log_frame(entry)
    if progress:
        progress(1)
    return 0 if entry is None else 1


def _fuse_loop(todo, pool, prepare, write, model, o: RegisterOptions, clock: _StageClock, ds: OutputDataset,
               progress) -> int:
    """Prepare in the pool, infer in this thread in batches, write in the pool: the stages overlap.

    Frames are logged here, oldest first, so ``frames.jsonl`` is in frame order."""
    from rig.model import fuse, fuse_and_segment

    written = 0
    prepared: deque[Future] = deque()
    writes: deque[Future] = deque()
    it = iter(todo)
    ahead = max(2 * o.batch_size, 2 * o.workers)

    def refill():
        while len(prepared) < ahead:
            job = next(it, None)
            if job is None:
                return
            prepared.append(pool.submit(prepare, job))

    refill()
    while prepared:
        batch = []
        while prepared and len(batch) < o.batch_size:
            p = prepared.popleft().result()
            if p is not None:
                batch.append(p)
            elif progress:  # a corrupt pair: done (listed), nothing to write
                progress(1)
        refill()
        if batch:
            t0 = time.perf_counter()
            vis, ir = np.stack([p.visible for p in batch]), np.stack([p.ir8 for p in batch])
            if o.segmentation:
                fused, labels = fuse_and_segment(vis, ir, model)
            else:
                fused, labels = fuse(vis, ir, model), [None] * len(batch)
            clock.add("model", time.perf_counter() - t0)
            for p, f, lab in zip(batch, fused, labels):
                writes.append(pool.submit(write, p, f, lab))
        while writes and (writes[0].done() or len(writes) > 2 * o.workers):
            written += _collect(writes.popleft(), ds, progress)
    while writes:
        written += _collect(writes.popleft(), ds, progress)
    return written
