"""The whole of one ``rig calibrate`` run: source -> detect -> solve -> merge -> save -> exports -> report.

:func:`calibrate` is the one entry point the CLI calls; it does the file I/O
that :mod:`rig.calibration.pipeline` (pure computation) leaves out: reading the
earlier calibration, accumulating into it, writing ``calibration.yaml``, the
exports (:mod:`rig.calibration.exports`) and the report. Progress goes through
a callback, nothing is printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rig.boards import Board
from rig.calibration import pipeline as pl
from rig.calibration import results, sources
from rig.calibration.exports import Exports, write_exports
from rig.calibration.results import Calibration
from rig.errors import RigError
from rig.rigconfig import RigConfig


@dataclass(frozen=True)
class CalibrateRequest:
    """What to calibrate, from which views, and where the results go.

    The views come from ``session``, else ``images`` (camera -> folder), else the
    simulated rig (``views`` board poses from ``seed``, rendered by
    ``render_workers`` processes). ``out``: output folder (default: the rig's
    calibration path, see :func:`output_paths`).
    """

    board: Board
    rig: RigConfig
    options: pl.CalibrateOptions
    session: Path | None = None
    images: dict[str, Path] | None = None
    views: int = 40
    seed: int = 0
    max_views: int = 60
    render_workers: int | None = None
    out: Path | None = None
    report: bool = True
    rig_given: bool = True  # False: the rig is the default (sim), not named by the user: not recorded for image folders

    def inputs(self) -> list[Path]:
        """The folders the user's images are read from (never written)."""
        return ([self.session] if self.session else []) + list((self.images or {}).values())


@dataclass(frozen=True)
class OutputPaths:
    """``calibration``: the calibration.yaml accumulated into; ``folder``: report and exports."""

    calibration: Path
    folder: Path


@dataclass(frozen=True)
class CalibrateOutcome:
    """What :func:`calibrate` computed and wrote."""

    run: pl.CalibrationRun
    calibration: Calibration
    paths: OutputPaths
    exports: Exports
    report: Path | None


def output_paths(rig: RigConfig, out: Path | None) -> OutputPaths:
    """``out/calibration.yaml`` and ``out``; without ``out`` the rig's calibration path and ``<stem>_report/`` beside it."""
    if out is not None:
        return OutputPaths(out / "calibration.yaml", out)
    yaml_path = Path(rig.calibration) if rig.calibration is not None else Path("calibration.yaml")
    return OutputPaths(yaml_path, yaml_path.parent / f"{yaml_path.stem}_report")


def check_outputs_outside_inputs(folder: Path, inputs: list[Path]) -> None:
    """Inputs are never modified: an output folder inside (or equal to) an input folder is an error."""
    for src in inputs:
        try:
            inside = folder.resolve() == src.resolve() or folder.resolve().is_relative_to(src.resolve())
        except OSError:
            continue
        if inside:
            raise RigError("output folder is inside an input folder; inputs are never modified: choose another --out",
                           path=folder)


def check_kept_intrinsics(cameras: list[str], compute: tuple[str, ...] | None, existing: Calibration | None,
                          path: Path) -> None:
    """Cameras whose intrinsics are not computed now must be in the earlier calibration (before any detection):
    asked to keep intrinsics that are not there, the run would compute nothing for them."""
    if compute is None:
        return
    missing = [c for c in cameras if c not in compute and (existing is None or c not in existing.cameras)]
    if missing:
        names, pron = " and ".join(missing), "it" if len(missing) == 1 else "them"
        state = f"has no {names}" if existing is not None else "does not exist yet"
        raise RigError(f"--cameras keeps the intrinsics of {names} from the earlier calibration, which {state}: "
                       f"calibrate {pron} into this --out first, or name {pron} in --cameras", path=path)


def _source(req: CalibrateRequest, progress: pl.Progress | None, stats: dict) -> sources.ViewSource:
    if req.session:
        return sources.session_source(req.session, req.max_views)
    if req.images:
        return sources.folder_source(req.images)
    done = 0

    def rendered(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress("render", done, req.views)

    if progress:
        progress("render", 0, req.views)
    return sources.sim_source(req.rig, req.board, req.views, req.seed, workers=req.render_workers,
                              progress=rendered, stats=stats)


def calibrate(req: CalibrateRequest, progress: pl.Progress | None = None) -> CalibrateOutcome:
    """Run one calibration end to end and write its results (see the module docstring).

    Progress tasks: ``"render"`` (simulated rig only), ``"detect"``, ``"solve"`` (a total of 0: not known yet).
    A :class:`~rig.calibration.pipeline.CalibrationError` leaves a partial report
    (unless ``req.report`` is false) whose path is on the exception's ``report``.
    """
    paths = output_paths(req.rig, req.out)
    check_outputs_outside_inputs(paths.folder, req.inputs())
    existing = results.load_calibration(paths.calibration) if paths.calibration.is_file() else None
    t_start = time.perf_counter()
    render_stats: dict = {}
    source = _source(req, progress, render_stats)
    check_kept_intrinsics(source.cameras, req.options.intrinsics_for, existing, paths.calibration)
    run = pl.CalibrationRun(req.board, source)
    if render_stats:  # the simulator's cost, reported apart from calibration's
        run.timings["render_s"] = render_stats["render_s"]
        run.timings["render_cpu_s"] = render_stats["render_cpu_s"]
    try:
        if progress:
            progress("detect", 0, len(source.views) * len(source.cameras))
        pl.detect_views(source, req.board, req.options, progress, run)
        if progress:
            progress("solve", 0, 0)  # total not known yet
        pl.solve(run, req.options, existing, progress)
    except pl.CalibrationError as exc:
        if req.report:
            from rig.calibration.report import write_report

            try:
                exc.report = write_report(exc.partial or run, None, paths.folder, error=str(exc))
            except Exception:  # the one-line error matters more than the partial report
                pass
        raise
    run.timings["total_s"] = time.perf_counter() - t_start
    if "render_s" in run.timings:  # what calibrating costs on recorded images: everything but the simulator
        run.timings["total_without_render_s"] = run.timings["total_s"] - run.timings["render_s"]
    cal = results.merge(existing, pl.build_calibration(run), pl.run_record(run, req.rig.name if req.rig_given else None))
    results.save_calibration(cal, paths.calibration)
    exports = write_exports(cal, paths.folder)
    report = None
    if req.report:
        from rig.calibration.report import write_report

        report = write_report(run, cal, paths.folder)
    return CalibrateOutcome(run, cal, paths, exports, report)
