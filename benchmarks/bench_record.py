"""Recorder throughput: 2x the nominal rig data rate, zero drops, next to a naive PNG-per-frame recorder.

Nominal rig: visible 1920x1200 8-bit @ 30 fps + LWIR 640x512 16-bit @ 60 fps (108.4 MB/s).
The simulated cameras run at twice their fps (216.8 MB/s), paced in real time like
real cameras (frames not read in time are lost and show as counter gaps).

    python benchmarks/bench_record.py               # 60 s each
    python benchmarks/bench_record.py --seconds 10  # quick check

Prints, for the recorder and for the naive recorder (``cv2.imwrite`` of a PNG per
frame inside the capture loop, one thread per camera), the data rate delivered to
disk, frames lost (queue drops + counter gaps), and the process CPU time as a share
of the machine's cores. The session directories are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from rig.capture.recorder import Recorder
from rig.capture.sim_camera import sim_cameras_for_drive
from rig.rigconfig import load_rig
from rig.session import SessionReader

FPS_SCALE = 2.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def nominal_mb_s(rig) -> float:
    from rig.pixfmt import pixel_format

    return sum(pixel_format(c.pixel_format).nbytes(c.width, c.height) * c.fps for c in rig.cameras) / 1e6


def bench_recorder(rig, out: Path, seconds: float, seed: int) -> dict:
    cams = sim_cameras_for_drive(rig, seed=seed, realtime=True, world_duration_s=4.0, fps_scale=FPS_SCALE)
    with Recorder(rig, out, cams, min_free_bytes=2 << 30) as rec:
        c0, t0 = _cpu(), time.monotonic()
        result = rec.run(seconds)
        wall, cpu = time.monotonic() - t0, _cpu() - c0
    with SessionReader(out) as r:
        s = r.summary()
    missing = sum(c["missing_by_counter"] for c in s["cameras"].values())
    return {"name": "recorder (raw session)", "frames": result.frames, "mb_s": result.total_bytes / 1e6 / seconds,
            "drops": sum(result.drops.values()), "missing": missing, "cpu": cpu / wall,
            "fps": {n: c["fps_measured"] for n, c in s["cameras"].items()}}


def bench_naive(rig, out: Path, seconds: float, seed: int) -> dict:
    """PNG per frame in the capture loop: what a first script would do."""
    cams = sim_cameras_for_drive(rig, seed=seed, realtime=True, world_duration_s=4.0, fps_scale=FPS_SCALE)
    out.mkdir(parents=True)
    stats = {}
    stop = threading.Event()

    def loop(cam):
        d = out / cam.name
        d.mkdir()
        n = nbytes = 0
        first = last = None
        while not stop.is_set():
            f = cam.grab(0.5)
            if f is None:
                continue
            cv2.imwrite(str(d / f"{f.frame_counter:06d}.png"), f.image)
            nbytes += f.image.nbytes
            n += 1
            first = f.frame_counter if first is None else first
            last = f.frame_counter
        stats[cam.name] = (n, nbytes, (last - first + 1 - n) if n else 0)

    for cam in cams:
        cam.open()
        cam.configure()
    c0, t0 = _cpu(), time.monotonic()
    for cam in cams:
        cam.start()
    threads = [threading.Thread(target=loop, args=(c,)) for c in cams]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    for cam in cams:
        cam.close()
    return {"name": "naive (PNG per frame)", "frames": {n: v[0] for n, v in stats.items()},
            "mb_s": sum(v[1] for v in stats.values()) / 1e6 / seconds, "drops": 0,
            "missing": sum(v[2] for v in stats.values()), "cpu": cpu / wall,
            "fps": {n: v[0] / seconds for n, v in stats.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="recording time per recorder (default 60)")
    ap.add_argument("--naive-seconds", type=float, default=None, help="naive recorder time (default: --seconds)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the recorded data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rig = load_rig("sim")
    nominal = nominal_mb_s(rig)
    base = Path(tempfile.mkdtemp(prefix="bench_record_", dir=args.dir))
    cores = os.cpu_count() or 1
    print(f"nominal rig data rate {nominal:.1f} MB/s; target 2x = {FPS_SCALE * nominal:.1f} MB/s "
          f"(sim cameras at {FPS_SCALE:g}x fps), {args.seconds:g} s, {cores} cores, writing under {base}", flush=True)
    try:
        rows = [bench_recorder(rig, base / "session", args.seconds, args.seed)]
        shutil.rmtree(base / "session", ignore_errors=True)
        rows.append(bench_naive(rig, base / "naive", args.naive_seconds or args.seconds, args.seed))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'':24s} {'MB/s':>8s} {'x nominal':>9s} {'drops':>6s} {'lost':>6s} {'CPU cores':>9s} {'CPU %':>6s}  fps")
    for r in rows:
        fps = ", ".join(f"{n} {v:.1f}" for n, v in r["fps"].items())
        print(f"{r['name']:24s} {r['mb_s']:8.1f} {r['mb_s'] / nominal:9.2f} {r['drops']:6d} {r['missing']:6d} "
              f"{r['cpu']:9.2f} {100 * r['cpu'] / cores:5.0f}%  {fps}")
    rec = rows[0]
    ok = rec["drops"] == 0 and rec["missing"] == 0 and rec["mb_s"] >= 0.98 * FPS_SCALE * nominal
    print(f"recorder sustains {FPS_SCALE:g}x nominal with zero drops: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
