"""Calibration: per-camera intrinsics, LWIR->visible extrinsics and homography, report (``rig calibrate``).

Public API::

    from rig.calibration import load_calibration, Calibration
    cal = load_calibration("rig-calibration/sim.yaml")
    cal.cameras["lwir"].K, cal.homography.H   # H: undistorted LWIR px -> undistorted visible px

Schema: ``calibration/SCHEMA.md``. Modules: ``detect``, ``thermal``, ``intrinsics``,
``coverage``, ``stereo``, ``bundle``, ``homography``, ``results`` (calibration.yaml),
``exports`` (Kalibr, OpenCV, ROS camera_info), ``report`` and ``plots``, ``sources``,
``pipeline`` (pure computation), ``workflow`` (one ``rig calibrate`` run, with its I/O),
``record`` (``rig record --calibration``: keeps still board views until coverage suffices),
``cli``. Heavy imports (open3d) happen inside functions.
"""

from rig.calibration.results import (Calibration, CameraCalibration, Extrinsics, Homography, Registration,
                                     load_calibration, save_calibration)

__all__ = ["Calibration", "CameraCalibration", "Extrinsics", "Homography", "Registration", "load_calibration",
           "save_calibration"]
