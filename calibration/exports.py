"""Exports of a :class:`~rig.calibration.results.Calibration` to other tools' formats.

Written beside ``calibration.yaml`` by ``rig calibrate`` (see ``calibration/SCHEMA.md``):

* ``camchain.yaml``: Kalibr camchain (cam0 = visible, cam1 = lwir);
* ``calibration_opencv.yml``: ``cv2.FileStorage`` (``stereoCalibrate`` conventions);
* ``<camera>_camera_info.yaml``: ROS ``sensor_msgs/CameraInfo`` in the
  ``camera_calibration_parsers`` YAML layout that ``camera_info_manager`` loads.

The ``*_doc`` functions are pure (calibration -> plain data); :func:`write_exports`
does the writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rig.calibration.results import Calibration, CameraCalibration
from rig.errors import RigError
from rig.yamlio import dump_yaml

CAMERA_ORDER = ("visible", "lwir")


@dataclass(frozen=True)
class Exports:
    """Paths of the files :func:`write_exports` wrote."""

    kalibr: Path
    opencv: Path
    ros: dict[str, Path] = field(default_factory=dict)  # camera -> <camera>_camera_info.yaml

    def paths(self) -> list[Path]:
        return [self.kalibr, self.opencv, *self.ros.values()]


def _m(a) -> list:
    return np.round(np.asarray(a, np.float64), 12).tolist()


def _ordered(cal: Calibration) -> list[str]:
    return [n for n in CAMERA_ORDER if n in cal.cameras] + [n for n in cal.cameras if n not in CAMERA_ORDER]


# --------------------------------------------------------------------------- Kalibr
def kalibr_camchain(cal: Calibration, topics: dict[str, str] | None = None) -> dict:
    """A Kalibr camchain document (cam0 = visible, cam1 = lwir).

    Kalibr's ``radtan`` has k1 k2 p1 p2 only: a non-zero k3 (or rational terms)
    cannot be represented and is dropped (:func:`write_exports` notes it in the header).
    """
    order = _ordered(cal)
    doc: dict = {}
    for i, name in enumerate(order):
        c = cal.cameras[name]
        entry = {"camera_model": "pinhole", "intrinsics": [float(c.K[0, 0]), float(c.K[1, 1]), float(c.K[0, 2]), float(c.K[1, 2])],
                 "distortion_model": "equidistant" if c.model == "fisheye" else "radtan",
                 "distortion_coeffs": [float(x) for x in c.dist[:4]], "resolution": list(map(int, c.image_size)),
                 "rostopic": (topics or {}).get(name, f"/{name}/image_raw"), "cam_overlaps": [j for j in range(len(order)) if j != i]}
        if i > 0 and cal.extrinsics is not None and {name, order[i - 1]} == {cal.extrinsics.from_camera, cal.extrinsics.to_camera}:
            e = cal.extrinsics
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = e.R, np.ravel(e.t)  # X_to = T X_from
            if e.to_camera == name:  # T_cn_cnm1: X_cn = T X_cnm1
                entry["T_cn_cnm1"] = _m(T)
            else:
                entry["T_cn_cnm1"] = _m(np.linalg.inv(T))
        doc[f"cam{i}"] = entry
    return doc


# --------------------------------------------------------------------------- ROS
def ros_distortion(camera: CameraCalibration) -> tuple[str, list[float]]:
    """ROS ``distortion_model`` and ``D`` for a camera.

    Pinhole k1 k2 p1 p2 [k3] -> ``plumb_bob`` (5 coefficients, k3 = 0 when absent);
    k1 k2 p1 p2 k3 k4 k5 k6 -> ``rational_polynomial`` (8); fisheye k1..k4 -> ``equidistant`` (4).
    """
    d = [float(x) for x in np.ravel(camera.dist)]
    if camera.model == "fisheye":
        return "equidistant", d[:4]
    if len(d) == 8:
        return "rational_polynomial", d
    return "plumb_bob", (d + [0.0] * 5)[:5]


def ros_camera_info(camera: CameraCalibration) -> dict:
    """The ``camera_calibration_parsers`` YAML document of one camera (``sensor_msgs/CameraInfo``).

    The camera is not stereo-rectified: the rectification matrix is the identity
    and the projection matrix is ``P = [K | 0]``, so ``image_proc``'s rectified
    image is the undistorted image with the same camera matrix ``K`` (the
    convention ``calibration.yaml``'s homography is expressed in).
    """
    model, D = ros_distortion(camera)
    K = np.asarray(camera.K, np.float64)
    P = np.c_[K, np.zeros(3)]

    def mat(a: np.ndarray) -> dict:
        a = np.atleast_2d(np.asarray(a, np.float64))
        return {"rows": int(a.shape[0]), "cols": int(a.shape[1]), "data": [float(x) for x in a.ravel()]}  # exact

    return {"image_width": int(camera.image_size[0]), "image_height": int(camera.image_size[1]),
            "camera_name": camera.name, "camera_matrix": mat(K), "distortion_model": model,
            "distortion_coefficients": mat(np.array([D])), "rectification_matrix": mat(np.eye(3)),
            "projection_matrix": mat(P)}


# --------------------------------------------------------------------------- writing
def _write_text(path: Path, text: str) -> Path:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RigError(f"cannot write ({exc.strerror})", path=path) from None
    return path


def _write_opencv(cal: Calibration, path: Path) -> Path:
    import cv2

    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    if not fs.isOpened():
        raise RigError("cannot write (cv2.FileStorage could not open it)", path=path)
    for name, c in cal.cameras.items():
        fs.write(f"{name}_model", c.model)
        fs.write(f"{name}_image_width", int(c.image_size[0]))
        fs.write(f"{name}_image_height", int(c.image_size[1]))
        fs.write(f"{name}_camera_matrix", np.asarray(c.K, np.float64))
        fs.write(f"{name}_distortion_coefficients", np.asarray(c.dist, np.float64).reshape(1, -1))
    if cal.extrinsics is not None:
        e = cal.extrinsics
        # OpenCV stereoCalibrate convention: X_2 = R X_1 + T with camera 1 = visible, camera 2 = lwir.
        fs.write("R", np.asarray(e.R.T, np.float64))
        fs.write("T", np.asarray(-e.R.T @ np.ravel(e.t), np.float64).reshape(3, 1))
        fs.write("R_T_convention", "X_lwir = R X_visible + T (stereoCalibrate, camera 1 = visible)")
    if cal.homography is not None:
        fs.write("H_lwir_to_visible_undistorted", np.asarray(cal.homography.H, np.float64))
        fs.write("plane_distance_m", float(cal.homography.plane_distance_m))
    if cal.registration is not None:
        fs.write("registration_crop_xywh", np.asarray(cal.registration.crop, np.float64).reshape(1, 4))
        fs.write("output_size", np.asarray(cal.registration.output_size, np.int32).reshape(1, 2))
    fs.release()
    return path


def write_exports(cal: Calibration, folder: str | Path) -> Exports:
    """Write ``camchain.yaml``, ``calibration_opencv.yml`` and one ``<camera>_camera_info.yaml`` per camera."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RigError(f"cannot create the output folder ({exc.strerror})", path=folder) from None
    dropped_k3 = [n for n, c in cal.cameras.items() if c.model == "pinhole" and len(c.dist) > 4 and np.abs(c.dist[4:]).max() > 0]
    header = "# Kalibr camchain written by rig.\n"
    if dropped_k3:
        header += f"# Kalibr radtan has no k3: k3 dropped for {', '.join(dropped_k3)} (see calibration.yaml for the full model).\n"
    kalibr = _write_text(folder / "camchain.yaml", header + dump_yaml(kalibr_camchain(cal)))
    opencv = _write_opencv(cal, folder / "calibration_opencv.yml")
    ros = {}
    for name in _ordered(cal):
        head = (f"# ROS camera_info ({name}) written by rig: not stereo-rectified, so R = I and P = [K | 0]\n"
                "# (see calibration/SCHEMA.md).\n")
        ros[name] = _write_text(folder / f"{name}_camera_info.yaml", head + dump_yaml(ros_camera_info(cal.cameras[name])))
    return Exports(kalibr, opencv, ros)
