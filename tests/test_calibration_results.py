"""calibration.yaml: round trip, validation errors naming file and key, exports."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from rig.calibration.exports import kalibr_camchain
from rig.calibration.results import (Calibration, CameraCalibration, Extrinsics, Homography, Registration,
                                     load_calibration, save_calibration)
from rig.errors import RigError


def _cal():
    K = np.array([[700.0, 0, 320], [0, 701, 256], [0, 0, 1]])
    cams = {"visible": CameraCalibration("visible", "pinhole", (1920, 1200), K * [[2.4, 1, 3], [1, 2.4, 2.3], [1, 1, 1]],
                                         np.array([-0.1, 0.05, 0, 0, -0.01]), 0.2, {"fx": 0.1, "fy": 0.1, "cx": 0.2, "cy": 0.2, "dist": [0.001] * 5}),
            "lwir": CameraCalibration("lwir", "pinhole", (640, 512), K, np.array([-0.3, 0.1, 0, 0, 0.0]), 0.25)}
    R = np.eye(3)
    return Calibration(cams, Extrinsics("lwir", "visible", R, np.array([0.12, 0.05, 0.0]), np.full(3, 0.01), np.full(3, 0.0005), 0.2),
                       Homography("lwir", "visible", np.diag([2.0, 2.0, 1.0]), 15.0, "plane", parallax_px={2.0: {"mean": 5.0, "max": 6.0}, float("inf"): {"mean": 1.0, "max": 1.1}}),
                       Registration((800, 600), (100.0, 50.0, 1600.0, 1200.0)), {"software": "rig test"})


def test_round_trip(tmp_path):
    p = save_calibration(_cal(), tmp_path / "calibration.yaml")
    cal = load_calibration(p)
    assert np.allclose(cal.cameras["visible"].K, _cal().cameras["visible"].K)
    assert cal.extrinsics.from_camera == "lwir" and np.allclose(cal.extrinsics.t, [0.12, 0.05, 0])
    assert np.allclose(cal.homography.H, np.diag([2.0, 2.0, 1.0])) and cal.homography.plane_distance_m == 15.0
    assert cal.registration.scale == pytest.approx(0.5)
    assert float("inf") in cal.homography.parallax_px
    assert "UNDISTORTED lwir pixels" in p.read_text()


@pytest.mark.parametrize("edit, key, msg", [
    (lambda d: d["cameras"]["lwir"].pop("K"), "cameras.lwir.K", "missing required key"),
    (lambda d: d["cameras"]["lwir"].__setitem__("model", "fish"), "cameras.lwir.model", "not one of"),
    (lambda d: d["extrinsics"].__setitem__("R", [[1, 0, 0], [0, 1, 0], [0, 0, 2]]), "extrinsics.R", "not a rotation matrix"),
    (lambda d: d["extrinsics"].__setitem__("from", "thermal"), "extrinsics.from", "not under 'cameras'"),
    (lambda d: d["homography"].__setitem__("H", [[1, 0], [0, 1]]), "homography.H", "3x3"),
    (lambda d: d["registration"].__setitem__("crop", [0, 0, -1, 5]), "registration.crop", "must be > 0"),
    (lambda d: d.__setitem__("colour", 1), "colour", "unknown key"),
])
def test_validation_names_file_and_key(tmp_path, edit, key, msg):
    p = save_calibration(_cal(), tmp_path / "c.yaml")
    d = yaml.safe_load(p.read_text())
    edit(d)
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(RigError) as e:
        load_calibration(p)
    assert str(e.value).startswith(f"{p}: {key}: ") and msg in str(e.value)


def test_kalibr_camchain():
    doc = kalibr_camchain(_cal())
    assert doc["cam0"]["resolution"] == [1920, 1200] and doc["cam1"]["distortion_model"] == "radtan"
    T = np.array(doc["cam1"]["T_cn_cnm1"])  # X_lwir = T X_visible
    assert np.allclose(T[:3, 3], [-0.12, -0.05, 0.0])


ROS_KEYS = {"image_width", "image_height", "camera_name", "camera_matrix", "distortion_model", "distortion_coefficients",
            "rectification_matrix", "projection_matrix"}


def _ros_matrix(node, rows, cols):
    assert set(node) == {"rows", "cols", "data"} and (node["rows"], node["cols"]) == (rows, cols)
    assert len(node["data"]) == rows * cols
    return np.array(node["data"], float).reshape(rows, cols)


def test_ros_camera_info_files(tmp_path):
    from rig.calibration.exports import write_exports

    cal = _cal()
    exports = write_exports(cal, tmp_path)
    assert set(exports.ros) == {"visible", "lwir"}
    for name, path in exports.ros.items():
        assert path == tmp_path / f"{name}_camera_info.yaml" and path.parent == exports.kalibr.parent
        doc = yaml.safe_load(path.read_text())
        c = cal.cameras[name]
        assert set(doc) == ROS_KEYS
        assert (doc["image_width"], doc["image_height"]) == c.image_size and doc["camera_name"] == name
        K = _ros_matrix(doc["camera_matrix"], 3, 3)
        assert np.array_equal(K, c.K)
        assert doc["distortion_model"] == "plumb_bob"
        assert np.array_equal(_ros_matrix(doc["distortion_coefficients"], 1, 5)[0], c.dist)
        assert np.array_equal(_ros_matrix(doc["rectification_matrix"], 3, 3), np.eye(3))
        assert np.array_equal(_ros_matrix(doc["projection_matrix"], 3, 4), np.c_[c.K, np.zeros(3)])


@pytest.mark.parametrize("model, dist, ros_model, n", [
    ("pinhole", [-0.1, 0.05, 0.001, -0.002], "plumb_bob", 5),  # k1 k2 p1 p2: k3 = 0
    ("pinhole", [-0.1, 0.05, 0.001, -0.002, 0.01, 0.2, 0.01, 0.03], "rational_polynomial", 8),
    ("fisheye", [0.01, -0.002, 0.0005, -0.0001], "equidistant", 4),
])
def test_ros_distortion_models(model, dist, ros_model, n):
    from rig.calibration.exports import ros_camera_info

    c = CameraCalibration("lwir", model, (640, 512), np.array([[700.0, 0, 320], [0, 700, 256], [0, 0, 1]]), np.array(dist))
    doc = ros_camera_info(c)
    assert doc["distortion_model"] == ros_model
    D = _ros_matrix(doc["distortion_coefficients"], 1, n)[0]
    assert np.array_equal(D[:len(dist)], dist) and not D[len(dist):].any()
