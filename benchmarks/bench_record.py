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

Then the real Boson driver (flirpy control, emulated 16-bit video at 60 fps) against
the Boson emulator, fault-free and under the reply fault mix
``garbage=0.05,drop=0.02,bad-crc=0.05,stale=0.02,ffc-stall`` with an FFC every 2 s:
frames kept per camera (of 60 per second), ``lost`` as ``rig session info`` counts
it, frames flagged FFC and the control faults the emulator injected. The target is
>= 90 % kept under the fault mix (``--only boson`` runs just this part).
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


BOSON_FAULT_MIX = "garbage=0.05,drop=0.02,bad-crc=0.05,stale=0.02,ffc-stall"


def bench_boson(out: Path, seconds: float, faults: str) -> dict:
    """The Boson driver on the emulator: frames kept of 60/s, lost, FFC frames, injected faults."""
    from rig.capture import boson_protocol as bp
    from rig.capture.boson_emulator import BosonEmulator, FaultPlan
    from rig.capture.camera import make_camera
    from rig.rigconfig import parse_rig

    with BosonEmulator(ffc_mode=bp.FfcMode.MANUAL, ffc_duration_s=0.4, auto_ffc_period_s=1e9,
                       faults=FaultPlan.parse(faults), seed=1) as emu:
        rig = parse_rig({"rig": "boson-dry", "cameras": [{
            "name": "lwir", "role": "lwir", "driver": "boson", "resolution": [640, 512], "pixel_format": "Y16",
            "fps": 60, "boson": {"serial_port": emu.port, "ffc_mode": "manual", "external_sync": "disabled"}}]})
        with Recorder(rig, out, [make_camera(rig.cameras[0])], min_free_bytes=1 << 30, ffc_interval_s=2.0) as rec:
            result = rec.run(seconds)
        injected = sum(emu.stats.faults.values())
    c = result.cameras["lwir"]
    return {"name": faults or "fault-free", "kept": {"lwir": c.frames}, "expected": {"lwir": round(60 * seconds)},
            "lost": {"lwir": c.lost}, "ffc": c.ffc_frames, "faults": injected, "status": result.status}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="recording time per recorder (default 60)")
    ap.add_argument("--naive-seconds", type=float, default=None, help="naive recorder time (default: --seconds)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the recorded data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("all", "sim", "boson"), default="all", help="which part to run")
    ap.add_argument("--boson-seconds", type=float, default=20.0, help="Boson emulator runs (default 20 s each)")
    args = ap.parse_args(argv)
    rig = load_rig("sim")
    nominal = nominal_mb_s(rig)
    base = Path(tempfile.mkdtemp(prefix="bench_record_", dir=args.dir))
    cores = os.cpu_count() or 1
    print(f"nominal rig data rate {nominal:.1f} MB/s; target 2x = {FPS_SCALE * nominal:.1f} MB/s "
          f"(sim cameras at {FPS_SCALE:g}x fps), {args.seconds:g} s, {cores} cores, writing under {base}", flush=True)
    ok = True
    try:
        if args.only in ("all", "sim"):
            ok &= _sim_part(rig, base, args, nominal, cores)
        if args.only in ("all", "boson"):
            ok &= _boson_part(base, args.boson_seconds)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


def _sim_part(rig, base: Path, args, nominal: float, cores: int) -> bool:
    rows = [bench_recorder(rig, base / "session", args.seconds, args.seed)]
    shutil.rmtree(base / "session", ignore_errors=True)
    rows.append(bench_naive(rig, base / "naive", args.naive_seconds or args.seconds, args.seed))
    print(f"{'':24s} {'MB/s':>8s} {'x nominal':>9s} {'drops':>6s} {'lost':>6s} {'CPU cores':>9s} {'CPU %':>6s}  fps")
    for r in rows:
        fps = ", ".join(f"{n} {v:.1f}" for n, v in r["fps"].items())
        print(f"{r['name']:24s} {r['mb_s']:8.1f} {r['mb_s'] / nominal:9.2f} {r['drops']:6d} {r['missing']:6d} "
              f"{r['cpu']:9.2f} {100 * r['cpu'] / cores:5.0f}%  {fps}")
    rec = rows[0]
    ok = rec["drops"] == 0 and rec["missing"] == 0 and rec["mb_s"] >= 0.98 * FPS_SCALE * nominal
    print(f"recorder sustains {FPS_SCALE:g}x nominal with zero drops: {'yes' if ok else 'NO'}")
    return ok


def _boson_part(base: Path, seconds: float) -> bool:
    print(f"\nBoson driver on the emulator, 60 fps LWIR, {seconds:g} s each, FFC every 2 s", flush=True)
    rows = []
    for i, faults in enumerate(("", BOSON_FAULT_MIX)):
        rows.append(bench_boson(base / f"boson{i}", seconds, faults))
        shutil.rmtree(base / f"boson{i}", ignore_errors=True)
    print(f"{'faults':58s} {'frames kept':26s} {'lost':>5s} {'FFC':>4s} {'injected':>8s}")
    for r in rows:
        kept = ", ".join(f"{n} {k}/{r['expected'][n]} ({100 * k / r['expected'][n]:.1f} %)" for n, k in r["kept"].items())
        lost = sum(r["lost"].values())
        print(f"{r['name']:58s} {kept:26s} {lost:5d} {r['ffc']:4d} {r['faults']:8d}")
    worst = min(k / r["expected"][n] for r in rows for n, k in r["kept"].items())
    ok = worst >= 0.9
    print(f"LWIR keeps >= 90 % of its frames under the fault mix: {'yes' if ok else 'NO'} ({100 * worst:.1f} %)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
