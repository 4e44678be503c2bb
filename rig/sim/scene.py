"""Procedural road scenes, rendered per modality with per-pixel ground truth.

A :class:`Scene` is a street built from a seed: road, sidewalks, building
facades, trees, poles with signs and traffic lamps, parked and moving cars,
trucks, buses, two-wheelers and pedestrians. Everything is made of axis-aligned
boxes above a ground plane, ray-cast exactly through the camera model, so both
cameras of a rig see the same geometry and every pixel has a known depth.

World frame: x right, y down, z forward (metres); the ground is the plane
``y = GROUND_Y`` (camera 1.6 m above the road). Camera poses map world to
camera: ``X_cam = R @ X_world + t``.

Labels use the FMB 15-class list (:data:`FMB_CLASSES`). Thermal signatures
are apparent temperatures: people ~31-34 degC, engines and wheels warm, the
sky very cold, asphalt warm by day and cool at night.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from rig.camera_model import CameraModel
from rig.pixfmt import normalize_16bit
from rig.rigconfig import ThermalSpec
from rig.sim.render import thermal_counts

FMB_CLASSES = ("background", "road", "sidewalk", "building", "traffic lamp", "traffic sign", "vegetation", "sky",
               "person", "car", "truck", "bus", "motorcycle", "bicycle", "pole")
BACKGROUND, ROAD, SIDEWALK, BUILDING, LAMP, SIGN, VEGETATION, SKY, PERSON, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE, POLE = range(15)
VARIANTS = ("day", "night", "fog")
GROUND_Y = 1.6
ROAD_HALF_WIDTH = 3.5
SIDEWALK_OUTER = 6.0
EGO_LANE_X = -1.75


@dataclass(frozen=True)
class Box:
    """Axis-aligned box with a label, a colour (RGB 0..1) and day/night apparent temperatures (degC)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    label: int
    color: tuple[float, float, float]
    temp_day: float
    temp_night: float
    emissive_night: float = 0.0  # visible glow at night (lamps, head/tail lights), 0..1
    texture: float = 0.15  # amplitude of procedural texture


@dataclass
class Scene:
    boxes: list[Box] = field(default_factory=list)
    length: float = 200.0

    def add(self, lo, hi, label, color, temp_day, temp_night, **kw) -> None:
        self.boxes.append(Box(tuple(map(float, lo)), tuple(map(float, hi)), label, tuple(color), temp_day, temp_night, **kw))


@dataclass(frozen=True)
class SceneRender:
    """What one camera sees: images plus ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    temperature: np.ndarray  # (H, W) float32, apparent degC
    labels: np.ndarray  # (H, W) uint8, FMB ids
    depth: np.ndarray  # (H, W) float32, z in the camera frame (inf for sky)


@dataclass(frozen=True)
class RegisteredSample:
    """A perfectly registered visible/LWIR pair with labels (for model training)."""

    visible: np.ndarray  # (H, W, 3) uint8 RGB
    lwir16: np.ndarray  # (H, W) uint16 counts
    lwir8: np.ndarray  # (H, W) uint8, robust-percentile normalised
    labels: np.ndarray  # (H, W) uint8
    variant: str


# --------------------------------------------------------------------------- building a scene
def make_scene(seed: int, length: float = 200.0) -> Scene:
    """A street of ``length`` metres along +z, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    sc = Scene(length=length)
    g = GROUND_Y
    for side in (-1, 1):
        z = -20.0
        while z < length:
            w = rng.uniform(8, 22)
            if rng.random() < 0.2:  # a gap with trees
                _tree(sc, rng, side * rng.uniform(6.5, 9.0), z + w / 2)
            else:
                depth, height = rng.uniform(8, 15), rng.uniform(6, 28)
                x0 = SIDEWALK_OUTER + rng.uniform(0.0, 1.5)
                base = rng.uniform(0.45, 0.8)
                tint = rng.uniform(-0.08, 0.08, 3)
                color = np.clip(base + tint, 0, 1)
                lo, hi = (x0, g - height, z), (x0 + depth, g, z + w - rng.uniform(0.5, 2))
                if side < 0:
                    lo, hi = (-hi[0], lo[1], lo[2]), (-lo[0], hi[1], hi[2])
                sc.add(lo, hi, BUILDING, color, rng.uniform(19, 26), rng.uniform(12, 16), emissive_night=0.15, texture=0.25)
            z += w
        z = rng.uniform(0, 15)
        while z < length:  # poles with signs or traffic lamps, trees between
            x = side * rng.uniform(4.9, 5.6)
            h = rng.uniform(4.5, 7)
            sc.add((x - 0.08, g - h, z - 0.08), (x + 0.08, g, z + 0.08), POLE, (0.45, 0.45, 0.47), 21, 11)
            kind = rng.random()
            if kind < 0.35:
                sc.add((x - 0.35, g - h + 0.3, z - 0.05), (x + 0.35, g - h + 1.0, z + 0.05), SIGN,
                       (0.1, 0.3, 0.75) if rng.random() < 0.5 else (0.85, 0.1, 0.1), 24, 9)
            elif kind < 0.6:
                sc.add((x - 0.2, g - h - 0.1, z - 0.2), (x + 0.2, g - h + 0.9, z + 0.2), LAMP, (0.12, 0.12, 0.1), 26, 20,
                       emissive_night=0.9)
            elif kind < 0.8:
                _tree(sc, rng, side * rng.uniform(4.6, 5.6), z + rng.uniform(4, 8))
            z += rng.uniform(15, 35)
    z = rng.uniform(8, 20)
    while z < length:  # vehicles; the ego lane (x = EGO_LANE_X) is kept free for the rig's own car
        lane = rng.choice([1.75, -2.9, 2.9], p=[0.5, 0.25, 0.25])
        kind = rng.choice([CAR, CAR, CAR, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE])
        z = z + _vehicle(sc, rng, float(lane), z, int(kind)) + rng.uniform(4, 25)
    for side in (-1, 1):  # pedestrians
        z = rng.uniform(3, 15)
        while z < length:
            _person(sc, rng, side * rng.uniform(4.0, 5.6), z)
            z += rng.uniform(6, 30)
    return sc


def _tree(sc: Scene, rng: np.random.Generator, x: float, z: float) -> None:
    g = GROUND_Y
    h = rng.uniform(3, 5)
    sc.add((x - 0.15, g - h, z - 0.15), (x + 0.15, g, z + 0.15), VEGETATION, (0.35, 0.25, 0.15), 17, 9)
    r = rng.uniform(1.2, 2.2)
    sc.add((x - r, g - h - 2 * r, z - r), (x + r, g - h + 0.3, z + r), VEGETATION,
           (0.15 + rng.uniform(0, 0.1), 0.45 + rng.uniform(0, 0.15), 0.12), 16, 8, texture=0.45)


def _vehicle(sc: Scene, rng: np.random.Generator, x: float, z: float, kind: int) -> float:
    g = GROUND_Y
    dims = {CAR: (1.8, 1.5, 4.4), TRUCK: (2.4, 3.4, 8.0), BUS: (2.5, 3.2, 11.0), MOTORCYCLE: (0.7, 1.2, 2.0),
            BICYCLE: (0.6, 1.1, 1.8)}[kind]
    w, h, l = dims
    color = tuple(rng.uniform(0.05, 0.9, 3)) if kind in (CAR, BUS) else (0.2, 0.2, 0.22)
    hot = kind in (CAR, TRUCK, BUS, MOTORCYCLE) and rng.random() < 0.7  # engine running
    body_t = (28 if hot else 22, 18 if hot else 8)
    if kind in (CAR, TRUCK, BUS):
        cabin = 0.55 if kind == CAR else 1.0
        sc.add((x - w / 2, g - h * (1 - cabin) - 0.3, z), (x + w / 2, g - 0.3, z + l), kind, color, *body_t, texture=0.05)
        sc.add((x - w / 2 + 0.1, g - h, z + 0.25 * l), (x + w / 2 - 0.1, g - h * (1 - cabin) - 0.3, z + 0.8 * l), kind,
               (0.1, 0.12, 0.15), *body_t, texture=0.05)
        # Engine at the rear face (facing us: traffic drives away) and wheels: warm.
        sc.add((x - w / 2 + 0.2, g - 0.9, z - 0.02), (x + w / 2 - 0.2, g - 0.35, z + 0.05), kind, (0.6, 0.05, 0.05),
               55 if hot else 24, 48 if hot else 12, emissive_night=0.8 if hot else 0.0)
        for wx in (x - w / 2 - 0.02, x + w / 2 - 0.3):
            for wz in (z + 0.6, z + l - 1.2):
                sc.add((wx, g - 0.7, wz), (wx + 0.32, g, wz + 0.7), kind, (0.05, 0.05, 0.05), 38 if hot else 21, 30 if hot else 9)
    else:
        sc.add((x - w / 4, g - h * 0.6, z), (x + w / 4, g, z + l), kind, color, 45 if hot else 20, 40 if hot else 9)
        _person(sc, rng, x, z + l * 0.35, rider=True)
    return l


def _person(sc: Scene, rng: np.random.Generator, x: float, z: float, rider: bool = False) -> None:
    g = GROUND_Y - (0.7 if rider else 0.0)
    h = rng.uniform(1.55, 1.9) - (0.6 if rider else 0.0)
    clothes = tuple(rng.uniform(0.05, 0.8, 3))
    sc.add((x - 0.22, g - h * 0.85, z - 0.14), (x + 0.22, g - (0.0 if rider else 0.0), z + 0.14), PERSON, clothes,
           31 + rng.uniform(-1, 1), 30 + rng.uniform(-1, 1))
    sc.add((x - 0.11, g - h, z - 0.11), (x + 0.11, g - h * 0.85, z + 0.11), PERSON, (0.8, 0.6, 0.5), 34, 34)


# --------------------------------------------------------------------------- rendering
def render_scene(scene: Scene, model: CameraModel, R: np.ndarray, t: np.ndarray, variant: str = "day") -> SceneRender:
    """Ray-cast ``scene`` through ``model`` at pose ``(R, t)`` (world -> camera); noise-free."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got '{variant}'")
    rays = model.pixel_rays()
    H, W = rays.shape[:2]
    Rt = R.T
    origin = -Rt @ t
    d = np.empty((H, W, 3))
    for k in range(3):
        d[..., k] = Rt[k, 0] * rays[..., 0] + Rt[k, 1] * rays[..., 1] + Rt[k, 2]
    # Parameter along d (camera z == 1 at lam == 1): lam is the depth in the camera frame.
    lam = np.full((H, W), np.inf)
    box_id = np.full((H, W), -1, np.int32)
    face = np.zeros((H, W), np.int8)  # axis of the face hit (0 x, 1 y, 2 z)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        gl = (GROUND_Y - origin[1]) * inv[..., 1]
    ground = np.where(gl > 0, gl, np.inf)
    # The image's extent in undistorted normalised coordinates: what a box's window is clipped to.
    fov = (float(rays[..., 0].min()), float(rays[..., 0].max()), float(rays[..., 1].min()), float(rays[..., 1].max()))
    for i, box in enumerate(scene.boxes):
        sl = _box_window(box, model, R, t, fov)
        if sl is None:
            continue
        ys, xs = sl
        dd = inv[ys, xs]
        lo = (np.asarray(box.lo) - origin)
        hi = (np.asarray(box.hi) - origin)
        with np.errstate(invalid="ignore"):
            t1 = lo * dd
            t2 = hi * dd
        tmin_ax = np.minimum(t1, t2)
        tmax = np.minimum.reduce(np.maximum(t1, t2), axis=-1)
        axis = np.argmax(tmin_ax, axis=-1)
        tmin = np.take_along_axis(tmin_ax, axis[..., None], -1)[..., 0]
        hit = (tmax >= tmin) & (tmin > 0.05) & (tmin < lam[ys, xs])
        if hit.any():
            lam_w = lam[ys, xs]
            lam_w[hit] = tmin[hit]
            lam[ys, xs] = lam_w
            b = box_id[ys, xs]
            b[hit] = i
            box_id[ys, xs] = b
            f = face[ys, xs]
            f[hit] = axis[hit]
            face[ys, xs] = f
    ground_hit = ground < lam
    lam = np.where(ground_hit, ground, lam)
    box_id[ground_hit] = -2
    with np.errstate(invalid="ignore"):  # sky pixels: inf * 0 along some axes
        pts = origin + d * lam[..., None]
    return _shade(scene, pts, d, lam, box_id, face, variant)


def _box_window(box: Box, model: CameraModel, R: np.ndarray, t: np.ndarray, fov: tuple[float, float, float, float]):
    """Pixel window that can contain the box (None when it is behind the camera or off-image).

    ``fov``: the image's ``(x0, x1, y0, y1)`` in undistorted normalised coordinates. The box's bounding
    rectangle there is clipped to it before it is mapped through the distortion: a lens's polynomial folds
    back beyond some radius (1.4-1.9 on the sim rig's lenses), so the outline of a box reaching far off axis
    (a building beside the car, its near end a few cm in front of the camera) came out on the wrong side of
    the image, and the box was clipped away where it is seen."""
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    s = np.linspace(0.0, 1.0, 9)
    pts = []
    for ax in range(3):
        o1, o2 = [a for a in range(3) if a != ax]
        for c1 in (lo[o1], hi[o1]):
            for c2 in (lo[o2], hi[o2]):
                p = np.empty((len(s), 3))
                p[:, ax] = lo[ax] + s * (hi[ax] - lo[ax])
                p[:, o1], p[:, o2] = c1, c2
                pts.append(p)
    P = np.concatenate(pts) @ R.T + t
    if (P[:, 2] <= 0.05).all():
        return None
    if (P[:, 2] <= 0.05).any():
        return slice(0, model.height), slice(0, model.width)
    # Distortion bends straight edges: bound in undistorted space, then map the
    # bounding rectangle's sampled outline through the distortion.
    xy = P[:, :2] / P[:, 2:3]
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    mx, my = 0.02 * (fov[1] - fov[0]), 0.02 * (fov[3] - fov[2])
    x0, x1 = max(x0, fov[0] - mx), min(x1, fov[1] + mx)
    y0, y1 = max(y0, fov[2] - my), min(y1, fov[3] + my)
    if x0 >= x1 or y0 >= y1:
        return None
    outline = np.concatenate([np.stack([np.linspace(x0, x1, 16), np.full(16, yv)], 1) for yv in (y0, y1)] +
                             [np.stack([np.full(16, xv), np.linspace(y0, y1, 16)], 1) for xv in (x0, x1)])
    from rig.camera_model import distort

    px = model.to_pixels(distort(outline, model.dist))
    c0, r0 = np.floor(px.min(0)).astype(int) - 2
    c1, r1 = np.ceil(px.max(0)).astype(int) + 3
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, model.width), min(r1, model.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _hash_noise(p: np.ndarray, scale: float) -> np.ndarray:
    """Cheap deterministic procedural texture in [-1, 1] from world positions."""
    q = p * scale
    return (np.sin(q[..., 0] * 1.7 + np.sin(q[..., 2] * 0.9)) * np.sin(q[..., 1] * 2.3 + q[..., 2] * 0.7)
            + 0.5 * np.sin(q[..., 0] * 5.1 + q[..., 1] * 3.7 + q[..., 2] * 4.3)) / 1.5


def _shade(scene: Scene, pts, d, lam, box_id, face, variant: str) -> SceneRender:
    with np.errstate(invalid="ignore", over="ignore"):
        return _shade_impl(scene, pts, d, lam, box_id, face, variant)


def _shade_impl(scene: Scene, pts, d, lam, box_id, face, variant: str) -> SceneRender:
    H, W = lam.shape
    night = variant == "night"
    labels = np.full((H, W), SKY, np.uint8)
    color = np.zeros((H, W, 3), np.float32)
    temp = np.full((H, W), -25.0 if not night else -30.0, np.float32)
    emissive = np.zeros((H, W), np.float32)
    sun = np.array([0.4, -0.8, 0.45])
    sun /= np.linalg.norm(sun)

    # Sky: gradient with height.
    sky = box_id == -1
    elev = np.clip(-d[..., 1] / np.linalg.norm(d, axis=-1), 0, 1)
    sky_col = np.stack([0.55 + 0.1 * elev, 0.7 + 0.1 * elev, 0.95 + 0.0 * elev], -1)
    color[sky] = sky_col[sky]
    temp[sky] = temp[sky] + 18.0 * (1 - elev[sky])

    # Ground: road with lane marks, sidewalks, verge.
    gr = box_id == -2
    gx, gz = pts[..., 0], pts[..., 2]
    ax = np.abs(gx)
    road = gr & (ax < ROAD_HALF_WIDTH)
    side = gr & (ax >= ROAD_HALF_WIDTH) & (ax < SIDEWALK_OUTER)
    verge = gr & (ax >= SIDEWALK_OUTER)
    labels[road], labels[side], labels[verge] = ROAD, SIDEWALK, BACKGROUND
    n_ground = _hash_noise(pts, 3.0)
    mark = road & ((np.abs(gx) < 0.08) & (np.mod(gz, 6.0) < 3.0) | (np.abs(ax - ROAD_HALF_WIDTH + 0.15) < 0.08))
    color[road] = (0.22 + 0.03 * n_ground[road])[:, None] * np.array([1, 1, 1.05])
    color[mark] = 0.85
    color[side] = (0.5 + 0.05 * n_ground[side])[:, None] * np.array([1, 0.97, 0.93])
    color[verge] = (0.35 + 0.05 * n_ground[verge])[:, None] * np.array([0.8, 0.9, 0.6])
    temp[road] = (29.0 if not night else 14.0) + 0.8 * n_ground[road]
    temp[mark] = (26.0 if not night else 13.0)  # white paint absorbs less sunlight than asphalt
    temp[side] = (28.0 if not night else 12.0) + 0.6 * n_ground[side]
    temp[verge] = (24.0 if not night else 9.0) + 0.8 * n_ground[verge]
    shade_ground = max(0.2, -sun[1])
    color[gr] *= shade_ground + 0.35

    # Boxes.
    hit = box_id >= 0
    if hit.any():
        ids = box_id[hit]
        lab = np.array([b.label for b in scene.boxes], np.uint8)
        col = np.array([b.color for b in scene.boxes], np.float32)
        tday = np.array([b.temp_day for b in scene.boxes], np.float32)
        tnight = np.array([b.temp_night for b in scene.boxes], np.float32)
        glow = np.array([b.emissive_night for b in scene.boxes], np.float32)
        tex = np.array([b.texture for b in scene.boxes], np.float32)
        labels[hit] = lab[ids]
        n = _hash_noise(pts[hit], 2.0).astype(np.float32)
        normals = np.zeros((ids.size, 3))
        f = face[hit]
        normals[np.arange(ids.size), f] = -np.sign(d[hit][np.arange(ids.size), f])
        lambert = np.clip(normals @ -sun, 0, 1) * 0.7 + 0.45
        color[hit] = col[ids] * (1 + tex[ids] * n)[:, None] * lambert[:, None]
        windows = (lab[ids] == BUILDING) & (np.sin(pts[hit][:, 1] * 2.2) > 0.3) & (np.sin(pts[hit][:, 2] * 1.6 + pts[hit][:, 0] * 1.6) > 0.2)
        color[hit] = np.where(windows[:, None], color[hit] * 0.45 + 0.05, color[hit])
        # Thermal appearance of what the visible camera sees as shading and windows (as in real LWIR): sunlit faces
        # are warmer by day (solar gain), and glass is opaque in LWIR: it reflects the cold sky by day and loses
        # heat (warmer than the wall) by night, so windows show in both modalities.
        sunlit = np.clip(normals @ -sun, 0, 1)
        temp[hit] = (tnight if night else tday)[ids] + 0.7 * n + (0.0 if night else 4.0) * sunlit
        temp[hit] = np.where(windows, temp[hit] + (2.0 if night else -5.0), temp[hit])
        emissive[hit] = glow[ids] * (windows * 0.6 + (lab[ids] != BUILDING))

    depth = lam.astype(np.float32)
    depth[sky] = np.inf
    if night:
        color = color * 0.06 + emissive[..., None] * np.array([1.0, 0.85, 0.55], np.float32)
        color[sky] = np.array([0.02, 0.02, 0.05])
    if variant == "fog":
        fog = (1.0 - np.exp(-np.where(np.isfinite(depth), depth, 1e6) / 35.0)).astype(np.float32)
        color = color * (1 - fog[..., None]) + 0.72 * fog[..., None]
        air = 12.0
        tf = (1.0 - np.exp(-np.where(np.isfinite(depth), depth, 1e6) / 400.0)).astype(np.float32)
        temp = temp * (1 - tf) + air * tf
    rgb = np.clip(color * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return SceneRender(rgb, temp.astype(np.float32), labels, depth)


# --------------------------------------------------------------------------- sensors
def visible_sensor(render: SceneRender, rng: np.random.Generator | None, noise_std: float = 1.5, blur_px: float = 0.7) -> np.ndarray:
    """Optics and exposure noise of the visible camera on a noise-free render (RGB uint8)."""
    img = render.rgb.astype(np.float32)
    if blur_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_px)
    if rng is not None and noise_std > 0:
        img = img + rng.normal(0.0, noise_std, img.shape).astype(np.float32) * np.sqrt(np.maximum(img, 1.0) / 128.0)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def lwir_sensor(render: SceneRender, thermal: ThermalSpec, rng: np.random.Generator | None, fpn_seed: int = 1234) -> np.ndarray:
    """LWIR optics (blur) and microbolometer model on apparent temperatures (uint16 counts)."""
    temp = render.temperature
    if thermal.blur_sigma_px > 0:
        temp = cv2.GaussianBlur(temp, (0, 0), thermal.blur_sigma_px)
    return thermal_counts(temp, thermal, rng, fpn_seed if rng is not None else None)


def drive_pose(z: float, yaw_deg: float = 0.0, pitch_deg: float = 3.0, x: float = EGO_LANE_X) -> tuple[np.ndarray, np.ndarray]:
    """World -> rig pose of a vehicle at ``(x, z)`` on the road, looking down +z."""
    from rig.rigconfig import rotation_from_vector_deg

    R = rotation_from_vector_deg([-pitch_deg, yaw_deg, 0.0])
    C = np.array([x, 0.0, z])
    return R, -R @ C


def render_registered(seed: int, variant: str = "day", size: tuple[int, int] = (800, 600),
                      thermal: ThermalSpec = ThermalSpec()) -> RegisteredSample:
    """A registered visible/LWIR/label triple from one virtual pinhole camera (training data).

    Both modalities come from the same viewpoint, so they are perfectly aligned;
    the field of view matches the rig's registered output (about 46 degrees).
    """
    rng = np.random.default_rng(seed)
    scene = make_scene(int(rng.integers(1 << 31)), length=120.0)
    w, h = size
    f = (w / 2) / np.tan(np.deg2rad(23.0))
    model = CameraModel(np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]]), np.zeros(5), w, h)
    R, t = drive_pose(float(rng.uniform(0, 60)), yaw_deg=float(rng.uniform(-8, 8)), pitch_deg=float(rng.uniform(1, 5)),
                      x=EGO_LANE_X + float(rng.uniform(-0.4, 0.4)))
    r = render_scene(scene, model, R, t, variant)
    vis = visible_sensor(r, rng, noise_std=1.5 if variant != "night" else 3.0)
    lwir = lwir_sensor(r, thermal, rng)
    return RegisteredSample(vis, lwir, normalize_16bit(lwir), r.labels, variant)
