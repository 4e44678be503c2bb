"""Simulator ground truth: camera model vs OpenCV, renderer geometry, scenes, sim cameras."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rig.boards import load_board
from rig.camera_model import CameraModel, distort, undistort
from rig.session import FrameFlags
from rig.capture.sim_camera import SimCamera, SimTiming, make_sim_cameras
from rig.pixfmt import to_pixel_format
from rig.sim import BoardWorld, DriveWorld
from rig.sim.render import ThermalLook
from rig.sim.scene import (PERSON, SKY, ROAD, FMB_CLASSES, make_scene, render_registered, render_scene,
                                   drive_pose)
from rig.sim.views import BoardViewRenderer, board_pose_plan, camera_model
from rig.pixfmt import normalize_16bit, to_rgb


@pytest.fixture(scope="module")
def models(sim_rig):
    return {c.name: camera_model(c) for c in sim_rig.cameras}


def test_projection_matches_opencv(sim_rig, models):
    rng = np.random.default_rng(0)
    P = rng.uniform([-3, -2, 3], [3, 2, 12], (200, 3))
    for name, m in models.items():
        ours = m.project(P)
        ref, _ = cv2.projectPoints(P, np.zeros(3), np.zeros(3), m.K, m.dist)
        assert np.abs(ours - ref.reshape(-1, 2)).max() < 1e-9
        # Unprojection inverts it far more precisely than OpenCV's default 5 iterations.
        back = m.unproject(ours)
        assert np.abs(back - P[:, :2] / P[:, 2:]).max() < 1e-10
        cv_back = cv2.undistortPoints(ours.reshape(-1, 1, 2), m.K, m.dist, None, np.eye(3), np.eye(3),
                                      (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)).reshape(-1, 2)
        assert np.abs(back - cv_back).max() < 1e-6


def test_undistort_inverts_distort_over_the_whole_image(models):
    m = models["lwir"]
    rays = m.pixel_rays()
    u, v = np.meshgrid(np.arange(m.width), np.arange(m.height))
    px = m.to_pixels(distort(rays, m.dist))
    assert np.abs(px[..., 0] - u).max() < 1e-8 and np.abs(px[..., 1] - v).max() < 1e-8
    assert np.allclose(undistort(np.zeros((1, 2)), m.dist), 0)


@pytest.fixture(scope="module")
def board_views(sim_rig):
    board = load_board("ir_board")
    poses = board_pose_plan(sim_rig, board, 4, seed=3)
    renderer = BoardViewRenderer(sim_rig, board)
    return board, [renderer.render(R, t, rng=None) for R, t in poses]


def _refined_error(gray: np.ndarray, truth: np.ndarray) -> np.ndarray:
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-4)
    found = cv2.cornerSubPix(gray.astype(np.float32), truth.astype(np.float32).reshape(-1, 1, 2).copy(), (5, 5), (-1, -1), crit)
    return np.linalg.norm(found.reshape(-1, 2) - truth, axis=1)


def test_rendered_corners_land_on_projected_ground_truth(board_views):
    """Projecting the board's 3D corners with the ground-truth model hits the corners in the render."""
    board, views = board_views
    for view in views:
        vis = cv2.cvtColor(view.images["visible"], cv2.COLOR_RGB2GRAY)
        lwir = view.images["lwir"].astype(np.float32)
        assert view.visible_in["visible"] and view.visible_in["lwir"]
        assert _refined_error(vis, view.corners["visible"]).max() < 0.05
        assert _refined_error(lwir, view.corners["lwir"]).max() < 0.1
        # And OpenCV's own detector finds the board in both (LWIR after robust 16->8 bit).
        for img in (vis, normalize_16bit(view.images["lwir"])):
            found, corners = cv2.findChessboardCornersSB(img, board.pattern_size)
            assert found


def test_board_renders_are_deterministic_and_realistic(sim_rig):
    board = load_board("ir_board")
    (R, t), = board_pose_plan(sim_rig, board, 1, seed=5)
    r = BoardViewRenderer(sim_rig, board)
    a = r.render(R, t, np.random.default_rng(7))
    b = r.render(R, t, np.random.default_rng(7))
    c = r.render(R, t, np.random.default_rng(8))
    for cam in ("visible", "lwir"):
        assert np.array_equal(a.images[cam], b.images[cam])
        assert not np.array_equal(a.images[cam], c.images[cam])
    lwir = a.images["lwir"]
    assert lwir.dtype == np.uint16 and lwir.shape == (512, 640)
    # Low contrast: the board's squares differ by ~2 K x 40 counts/K on a base of thousands of counts.
    inside = cv2.fillConvexPoly(np.zeros(lwir.shape, np.uint8), cv2.convexHull(a.corners["lwir"].astype(np.int32)), 1) > 0
    lo, hi = np.percentile(lwir[inside], [5, 95])
    assert 40 < hi - lo < 200 and lwir.min() > 5000
    # Temporal noise and fixed pattern: noise-free vs noisy differ by a few counts, not more.
    clean = r.render(R, t, None).images["lwir"].astype(float)
    diff = lwir.astype(float) - clean
    assert 5 < diff.std() < 40
    # Inverted polarity flips the board's squares.
    inv = BoardViewRenderer(sim_rig, board, thermal_look=ThermalLook(polarity="inverted")).render(R, t, None).images["lwir"]
    x, y = np.round((a.corners["lwir"][0] + a.corners["lwir"][10]) / 2).astype(int)  # centre of a black square
    assert clean[y, x] + 50 < inv[y, x]


def test_scene_labels_and_thermal_signatures():
    s = render_registered(seed=4, variant="day", size=(320, 240))
    assert s.visible.shape == (240, 320, 3) and s.visible.dtype == np.uint8
    assert s.lwir16.dtype == np.uint16 and s.lwir8.dtype == np.uint8 and s.labels.dtype == np.uint8
    present = set(np.unique(s.labels).tolist())
    assert {ROAD, SKY}.issubset(present) and max(present) < len(FMB_CLASSES)
    # Deterministic from the seed.
    assert np.array_equal(render_registered(seed=4, variant="day", size=(320, 240)).labels, s.labels)
    # Thermal: people and running engines are warm, the sky is cold.
    scene = make_scene(11)
    m = CameraModel(np.array([[300.0, 0, 159.5], [0, 300, 119.5], [0, 0, 1]]), np.zeros(5), 320, 240)
    R, t = drive_pose(10.0)
    r = render_scene(scene, m, R, t, "night")
    temp = r.temperature
    assert np.median(temp[r.labels == SKY]) < 0 < np.median(temp[r.labels == ROAD])
    if (r.labels == PERSON).any():
        assert np.median(temp[r.labels == PERSON]) > 28
    # Night: the visible image is dark, the thermal one is not.
    day = render_scene(scene, m, R, t, "day")
    assert r.rgb.mean() < 0.3 * day.rgb.mean()
    fog = render_scene(scene, m, R, t, "fog")
    far = np.isfinite(day.depth) & (day.depth > 40)
    assert fog.rgb[far].std() < 0.5 * day.rgb[far].std()  # fog washes out distant contrast


def test_scene_geometry_is_shared_by_both_cameras(sim_rig, models):
    """Ground-truth correspondence: a visible pixel at known depth projects onto the same object in LWIR."""
    scene = make_scene(2)
    Rr, tr = drive_pose(20.0)
    vis, ir = sim_rig.camera("visible"), sim_rig.camera("lwir")
    small_vis = CameraModel(models["visible"].K * [[0.25], [0.25], [1]], vis.sim.dist, 480, 300)
    rv = render_scene(scene, small_vis, vis.sim.R @ Rr, vis.sim.R @ tr + vis.sim.t)
    ri = render_scene(scene, models["lwir"], ir.sim.R @ Rr, ir.sim.R @ tr + ir.sim.t)
    ys, xs = np.mgrid[5:300:7, 5:480:7]
    ys, xs = ys.ravel(), xs.ravel()
    depth = rv.depth[ys, xs]
    ok = np.isfinite(depth)
    rays = small_vis.unproject(np.stack([xs, ys], -1)[ok].astype(float))
    P_vis = np.concatenate([rays, np.ones((len(rays), 1))], 1) * depth[ok][:, None]
    P_ir = P_vis @ (ir.sim.R @ vis.sim.R.T).T + (ir.sim.t - ir.sim.R @ vis.sim.R.T @ vis.sim.t)
    px = models["lwir"].project(P_ir)
    inside = (px[:, 0] >= 0) & (px[:, 0] < 639) & (px[:, 1] >= 0) & (px[:, 1] < 511)
    pi = np.round(px[inside]).astype(int)
    same = ri.labels[pi[:, 1], pi[:, 0]] == rv.labels[ys[ok][inside], xs[ok][inside]]
    assert inside.sum() > 300 and same.mean() > 0.95  # misses only at occlusion edges


@pytest.mark.parametrize("lo, hi", [((-5.0, -1.0, 0.06), (-0.3, 1.0, 20.0)),  # a wall beside the car, from 6 cm on
                                     ((0.4, -3.0, 0.3), (40.0, 1.0, 25.0))])     # a building block to the right
def test_a_box_reaching_far_off_axis_is_drawn_wherever_it_is_seen(models, lo, hi):
    """Every pixel whose ray hits a box shows it. A box reaching far off axis (its near end beside the camera) used
    to get a pixel window on the wrong side of the image: the lens polynomial folds back beyond some radius, and
    the window was the distorted outline of the box's whole bounding rectangle (drives lost near buildings in one
    modality for single frames, up to 32 % of the image)."""
    from rig.sim.scene import Scene

    for name in ("visible", "lwir"):
        m = models[name]
        small = CameraModel(m.K * [[0.25], [0.25], [1]], m.dist, m.width // 4, m.height // 4)
        scene = Scene()
        scene.add(lo, hi, PERSON, (0.8, 0.2, 0.2), 35.0, 35.0)
        r = render_scene(scene, small, np.eye(3), np.zeros(3))
        rays = small.pixel_rays()
        d = np.concatenate([rays, np.ones(rays.shape[:2] + (1,))], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (np.asarray(lo) / d), (np.asarray(hi) / d)
        near = np.nanmax(np.minimum(t0, t1), axis=-1)
        far = np.nanmin(np.maximum(t0, t1), axis=-1)
        hit = (far >= near) & (far > 0) & (near < 1e6)
        shown = r.labels == PERSON
        assert hit.sum() > 0.05 * hit.size, name
        assert np.mean(shown[hit]) > 0.999, (name, np.mean(shown[hit]))
        assert np.mean(hit[shown]) > 0.999, (name, np.mean(hit[shown]))  # and nowhere else


def test_sim_cameras_deliver_their_formats_and_rates(sim_rig):
    world = DriveWorld(sim_rig, seed=1, duration_s=1.0, keyframe_hz=1.0, max_render_width=480)
    cams = make_sim_cameras(sim_rig, world, realtime=False)
    frames = {}
    for cam in cams:
        with cam:
            cam.start()
            frames[cam.name] = [cam.grab() for _ in range(int(cam.spec.fps))]
    vis, ir = frames["visible"], frames["lwir"]
    assert vis[0].image.shape == (1200, 1920) and vis[0].pixel_format == "BayerRG8" and vis[0].image.dtype == np.uint8
    assert ir[0].image.shape == (512, 640) and ir[0].image.dtype == np.uint16
    assert [f.frame_counter for f in ir] == list(range(60))
    # The camera's own clock is ideal; host arrival times carry the transport latency (0.5-2 ms, sometimes late).
    assert np.allclose(np.diff([f.device_ns for f in vis]), 1e9 / 30, atol=1)
    assert np.allclose(np.diff([f.device_ns for f in ir]), 1e9 / 60, atol=1)
    for f in vis + ir:
        assert 0.5e6 <= f.host_ns - f.device_ns <= 10e6
    assert not np.array_equal(ir[0].image, ir[1].image)  # fresh temporal noise
    rgb = to_rgb(vis[5].image, "BayerRG8")
    assert rgb.shape == (1200, 1920, 3) and rgb[..., 2].mean() > rgb[..., 0].mean()  # blue sky wins over red


def test_lwir_ffc_freezes_and_flags_frames(sim_rig):
    spec = sim_rig.camera("lwir")
    world = DriveWorld(sim_rig, seed=1, duration_s=1.0, keyframe_hz=1.0)
    cam = SimCamera(spec, world, realtime=False, clock_start_ns=0, ffc_interval_s=0.5, ffc_duration_s=0.1)
    with cam:
        cam.start()
        frames = [cam.grab() for _ in range(60)]
    flagged = [f.frame_counter for f in frames if f.flags & FrameFlags.FFC]
    assert flagged == [25, 26, 27, 28, 29, 55, 56, 57, 58, 59]


class VirtualClock:
    """A host clock that only moves when slept on (or advanced): pacing without depending on machine speed."""

    def __init__(self, start_ns: int = 10**12):
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def test_arrival_jitter_and_late_frames_are_realistic_and_configurable(sim_rig):
    spec = sim_rig.camera("lwir")
    world = DriveWorld(sim_rig, seed=1, duration_s=1.0, keyframe_hz=1.0, max_render_width=160)

    def latencies(timing, n=3000):
        cam = SimCamera(spec, world, realtime=False, clock_start_ns=0, ffc_interval_s=0, timing=timing, seed=3)
        with cam:
            cam.start()
            frames = [cam.grab() for _ in range(n)]
        host = np.array([f.host_ns for f in frames])
        assert (np.diff(host) > 0).all()  # arrival order is frame order
        return (host - np.array([f.device_ns for f in frames])) / 1e6

    lat = latencies(None)  # the default: realistic
    assert 0.5 <= lat.min() and np.median(lat) == pytest.approx(1.25, abs=0.15)
    late = (lat > 2.5).mean()
    assert 0.001 < late < 0.015 and lat.max() <= 10.5  # occasional late deliveries, 1 in 200 on average
    assert np.abs(latencies(SimTiming.ideal(), 200)).max() <= 1e-6  # exact (to the ns) when asked for
    jittery = latencies(SimTiming((1.0, 5.0), 0.0, (0.0, 0.0)), 500)
    assert 1.0 <= jittery.min() and jittery.max() <= 5.0 and jittery.std() > 0.8
    with pytest.raises(ValueError, match="late_probability"):
        SimTiming(late_probability=2.0)


def test_realtime_pacing_and_lost_frames(sim_rig):
    # On a virtual clock: rendering the first keyframe may take seconds on a loaded machine without
    # that counting as time the camera ran.
    spec = sim_rig.camera("lwir")
    world = BoardWorld(sim_rig, load_board("ir_board"), n_views=1)
    clock = VirtualClock()
    with SimCamera(spec, world, clock=clock, timing=SimTiming.ideal()) as cam:
        cam.start()
        t0 = clock.now_ns()
        frames = [cam.grab() for _ in range(12)]
        assert clock.now_ns() - t0 == frames[-1].host_ns - t0 == round(11e9 / 60)  # 12 frames at 60 fps
        clock.sleep(0.1)  # a short stall (~6 frames): the 8-frame buffer keeps them all
        buffered = [cam.grab() for _ in range(6)]
        clock.sleep(0.3)  # a long stall (~18 frames): the oldest are overwritten
        late = cam.grab()
    assert [f.frame_counter for f in buffered] == list(range(12, 18)) and not any(f.flags for f in buffered)
    assert np.allclose(np.diff([f.host_ns for f in frames + buffered]), 1e9 / 60, atol=1)  # arrival times
    assert late.flags & FrameFlags.GAP_BEFORE and 27 <= late.frame_counter <= 28  # only the newest 8 kept (35 due)


def test_realtime_arrival_waits_for_the_jittered_arrival(sim_rig):
    spec = sim_rig.camera("lwir")
    world = BoardWorld(sim_rig, load_board("ir_board"), n_views=1)
    clock = VirtualClock()
    with SimCamera(spec, world, clock=clock, timing=SimTiming((1.0, 2.0), 0.0, (0.0, 0.0))) as cam:
        cam.start()
        frames = [cam.grab() for _ in range(30)]
        assert cam.grab(timeout_s=0.0001) is None  # the next frame is not due yet: a timeout, not a wait
    for f in frames:
        assert 1e6 <= f.host_ns - cam.frame_time_ns(f.frame_counter) <= 2e6
    assert clock.now_ns() >= frames[-1].host_ns


def test_to_pixel_format_bayer_roundtrip():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    raw = to_pixel_format(rgb, "BayerRG8")
    assert raw[0, 0] == 200 and raw[0, 1] == 100 and raw[1, 0] == 100 and raw[1, 1] == 50
