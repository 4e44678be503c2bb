"""Rig definitions: which cameras a rig has, how to reach them, and its output settings.

A rig file is YAML (see README "Rig definition"). :func:`load_rig` validates it
fully and returns a frozen :class:`RigConfig`; any problem raises
:class:`~rig.errors.RigError` naming the file and the dotted key path.

Conventions
-----------
* The rig frame is the visible camera's frame (x right, y down, z forward, metres).
* A camera's ``pose`` maps rig-frame points into the camera frame:
  ``X_cam = R @ X_rig + t``. It is given in the file as the camera centre in the
  rig frame (``position_m``) and a small rotation (``rotation_deg``: rotation
  vector in degrees); ``t = -R @ position``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rig.errors import RigError
from rig.resources import resolve_definition
from rig.yamlio import Node, load_yaml

ROLES = ("visible", "lwir")
DRIVERS = ("genicam", "boson", "sim")
PIXEL_FORMATS = ("Mono8", "BayerRG8", "BayerGR8", "BayerBG8", "BayerGB8", "RGB8", "BGR8", "Mono16", "Y16")
SYNC_MODES = ("free-run", "hardware")
DEFAULT_OUTPUT_SIZE = (800, 600)


@dataclass(frozen=True)
class SyncSpec:
    """How a camera is triggered. ``hardware`` cameras follow ``master``'s trigger."""

    mode: str = "free-run"
    master: str | None = None  # camera name driving the trigger line (hardware mode)
    line: str | None = None  # trigger input line on this camera, e.g. "Line0"


@dataclass(frozen=True)
class GenicamSpec:
    """Where a GenICam camera is found: a GenTL producer (``.cti``) and the device's serial or id."""

    cti: str | None = None  # path; None means the producer shipped with the genicam wheel (viky)
    serial: str | None = None
    device_id: str | None = None
    exposure_us: float | None = None
    gain_db: float | None = None


@dataclass(frozen=True)
class BosonSpec:
    """Where a FLIR Boson is found: its USB-CDC control port and V4L2 video device."""

    serial_port: str
    video_device: str | None = None
    baudrate: int = 921600
    ffc_mode: str = "auto"  # auto | manual
    external_sync: str = "disabled"  # disabled | master | slave


@dataclass(frozen=True)
class ThermalSpec:
    """Sim LWIR sensor model: counts, noise, non-uniformity, optics."""

    counts_per_kelvin: float = 40.0
    offset_counts: float = 8000.0  # counts at 0 degC
    temporal_noise_counts: float = 6.0
    fixed_pattern_counts: float = 15.0
    vignetting: float = 0.25  # relative loss of the scene-minus-housing signal at the image corner
    blur_sigma_px: float = 0.7
    housing_c: float = 25.0  # camera interior temperature: vignetting acts on the difference to it


@dataclass(frozen=True)
class SimFaults:
    """What makes a simulated camera of a real rig imperfect, capture by capture (all default to none).

    Relative to the rig frame, per simultaneous capture: ``jitter_rotation_deg``
    / ``jitter_translation_m`` (1-sigma per axis) of the camera's pose (a rig
    that is not perfectly rigid); a fraction ``outlier_fraction`` of the
    captures (every ``1/fraction``-th, at a seeded offset) rotated about the
    camera centre by ``outlier_rotation_deg`` (a range: the rig flexed, or the
    trigger missed); and a trigger offset ``trigger_offset_s`` while the board
    moves at ``board_speed_mps`` and turns at ``board_rotation_dps`` (hand-held):
    this camera sees the board where it was ``trigger_offset_s`` later.
    ``half_turn_fraction``: the fraction of captures (seeded, independent of
    the others) in which this camera's detector numbers the board's points by
    a half turn (:meth:`rig.boards.Board.half_turn`: an LWIR image that shows a
    chessboard's colours faintly or inverted). It applies where corners are
    synthesized from ground truth (:mod:`rig.calibration.synthetic`); rendered
    boards are numbered by the detector itself.
    """

    jitter_rotation_deg: float = 0.0
    jitter_translation_m: float = 0.0
    outlier_fraction: float = 0.0
    outlier_rotation_deg: tuple[float, float] = (0.3, 1.5)
    trigger_offset_s: float = 0.0
    board_speed_mps: float = 0.0
    board_rotation_dps: float = 0.0
    half_turn_fraction: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.jitter_rotation_deg or self.jitter_translation_m or self.outlier_fraction
                    or self.half_turn_fraction
                    or (self.trigger_offset_s and (self.board_speed_mps or self.board_rotation_dps)))


@dataclass(frozen=True)
class SimCameraSpec:
    """Ground truth of a simulated camera."""

    K: np.ndarray  # 3x3
    dist: np.ndarray  # (5,) k1 k2 p1 p2 k3
    R: np.ndarray  # 3x3, rig -> camera
    t: np.ndarray  # (3,), rig -> camera, metres
    noise_std: float = 1.5  # visible: exposure noise in 8-bit levels
    thermal: ThermalSpec = field(default_factory=ThermalSpec)
    faults: SimFaults = field(default_factory=SimFaults)


@dataclass(frozen=True)
class CameraSpec:
    name: str
    role: str
    driver: str
    resolution: tuple[int, int]  # (width, height)
    pixel_format: str
    fps: float
    sync: SyncSpec = field(default_factory=SyncSpec)
    genicam: GenicamSpec | None = None
    boson: BosonSpec | None = None
    sim: SimCameraSpec | None = None

    @property
    def width(self) -> int:
        return self.resolution[0]

    @property
    def height(self) -> int:
        return self.resolution[1]

    @property
    def is_16bit(self) -> bool:
        return self.pixel_format in ("Mono16", "Y16")


@dataclass(frozen=True)
class RigConfig:
    name: str
    cameras: tuple[CameraSpec, ...]
    output_size: tuple[int, int] = DEFAULT_OUTPUT_SIZE
    plane_distance_m: float = 15.0
    calibration: Path | None = None  # resolved against the rig file's folder
    description: str = ""
    source: Path | None = None

    def camera(self, name_or_role: str) -> CameraSpec:
        """Find a camera by name, or by role when the name is not found."""
        for cam in self.cameras:
            if cam.name == name_or_role:
                return cam
        matches = [c for c in self.cameras if c.role == name_or_role]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(c.name for c in self.cameras)
        raise RigError(f"no camera '{name_or_role}' in rig (cameras: {names})", path=self.source)

    def by_role(self, role: str) -> CameraSpec | None:
        return next((c for c in self.cameras if c.role == role), None)

    @property
    def is_hardware_synced(self) -> bool:
        return any(c.sync.mode == "hardware" for c in self.cameras)


def rotation_from_vector_deg(rvec_deg: list[float]) -> np.ndarray:
    """Rotation matrix from a rotation vector given in degrees (Rodrigues)."""
    import cv2

    R, _ = cv2.Rodrigues(np.deg2rad(np.asarray(rvec_deg, dtype=np.float64)).reshape(3, 1))
    return R


def load_rig(name_or_path: str | Path = "sim") -> RigConfig:
    """Load and validate a rig file (a path, or the name of a shipped rig such as ``sim``)."""
    path = resolve_definition(name_or_path, "rig")
    return parse_rig(load_yaml(path), path)


def parse_rig(data: object, path: Path | None = None) -> RigConfig:
    root = Node(data, path).mapping()
    root.reject_unknown({"rig", "description", "cameras", "output", "registration", "calibration"})
    name = root.req("rig").str()
    cams_node = root.req("cameras")
    cams = [_parse_camera(n) for n in cams_node.items()]
    if not cams:
        raise cams_node.error("a rig needs at least one camera")
    names = [c.name for c in cams]
    for i, c in enumerate(cams):
        if c.name in names[:i]:
            raise RigError(f"duplicate camera name '{c.name}'", path=path, key=f"cameras[{i}].name")
    for role in ROLES:
        if sum(c.role == role for c in cams) > 1:
            raise RigError(f"more than one camera with role '{role}'", path=path, key="cameras")
    for i, c in enumerate(cams):
        if c.sync.mode == "hardware":
            if c.sync.master is None:
                raise RigError("hardware sync needs 'master' (the camera driving the trigger)", path=path, key=f"cameras[{i}].sync.master")
            if c.sync.master not in names:
                raise RigError(f"master '{c.sync.master}' is not a camera of this rig", path=path, key=f"cameras[{i}].sync.master")

    output_size = DEFAULT_OUTPUT_SIZE
    if (out := root.opt("output")) is not None:
        out.reject_unknown({"size"})
        if (size := out.opt("size")) is not None:
            w, h = size.ints(2, lo=16)
            output_size = (w, h)
    plane = 15.0
    if (reg := root.opt("registration")) is not None:
        reg.reject_unknown({"plane_distance_m"})
        if (d := reg.opt("plane_distance_m")) is not None:
            plane = d.float(0.0, open_lo=True)
    calibration = None
    if (cal := root.opt("calibration")) is not None:
        calibration = Path(cal.str())
        if not calibration.is_absolute() and path is not None and not _is_shipped(Path(path)):
            # A user's rig keeps its calibration beside it; a shipped rig (read-only
            # package data) keeps it relative to the working directory.
            calibration = Path(path).parent / calibration
    description = root.opt("description").str() if root.has("description") else ""
    return RigConfig(name, tuple(cams), output_size, plane, calibration, description, Path(path) if path else None)


def _is_shipped(path: Path) -> bool:
    from rig.resources import shipped_dir

    try:
        return path.resolve().is_relative_to(shipped_dir().resolve())
    except OSError:
        return False


def _parse_camera(node: Node) -> CameraSpec:
    node.reject_unknown({"name", "role", "driver", "resolution", "pixel_format", "fps", "sync", "genicam", "boson", "sim"})
    name = node.req("name").str()
    role = node.req("role").str(ROLES)
    driver = node.req("driver").str(DRIVERS)
    w, h = node.req("resolution").ints(2, lo=8)
    default_fmt = "Mono16" if role == "lwir" else "BayerRG8"
    pixel_format = node.child("pixel_format").str(PIXEL_FORMATS) if node.has("pixel_format") else default_fmt
    fps = node.req("fps").float(0.0, 1000.0, open_lo=True)
    sync = SyncSpec()
    if (s := node.opt("sync")) is not None:
        s.reject_unknown({"mode", "master", "line"})
        sync = SyncSpec(
            mode=s.req("mode").str(SYNC_MODES),
            master=s.child("master").str() if s.has("master") else None,
            line=s.child("line").str() if s.has("line") else None,
        )
    genicam = boson = sim = None
    if driver == "genicam":
        g = node.req("genicam")
        g.reject_unknown({"cti", "serial", "device_id", "exposure_us", "gain_db"})
        if not (g.has("serial") or g.has("device_id")):
            raise g.error("give 'serial' or 'device_id' to select the device")
        genicam = GenicamSpec(
            cti=g.child("cti").str() if g.has("cti") else None,
            serial=str(g.data["serial"]) if g.has("serial") else None,
            device_id=g.child("device_id").str() if g.has("device_id") else None,
            exposure_us=g.child("exposure_us").float(0.0, open_lo=True) if g.has("exposure_us") else None,
            gain_db=g.child("gain_db").float() if g.has("gain_db") else None,
        )
    elif driver == "boson":
        b = node.req("boson")
        b.reject_unknown({"serial_port", "video_device", "baudrate", "ffc_mode", "external_sync"})
        boson = BosonSpec(
            serial_port=b.req("serial_port").str(),
            video_device=b.child("video_device").str() if b.has("video_device") else None,
            baudrate=b.child("baudrate").int(lo=1200) if b.has("baudrate") else 921600,
            ffc_mode=b.child("ffc_mode").str(("auto", "manual")) if b.has("ffc_mode") else "auto",
            external_sync=b.child("external_sync").str(("disabled", "master", "slave")) if b.has("external_sync") else "disabled",
        )
        if pixel_format not in ("Mono16", "Y16"):
            raise node.child("pixel_format").error("a Boson delivers 16-bit video: use Y16 or Mono16")
    else:
        sim = _parse_sim(node.req("sim"), role)
    return CameraSpec(name, role, driver, (w, h), pixel_format, fps, sync, genicam, boson, sim)


def _parse_sim(node: Node, role: str) -> SimCameraSpec:
    node.reject_unknown({"intrinsics", "distortion", "pose", "noise_std", "thermal", "faults"})
    intr = node.req("intrinsics")
    intr.reject_unknown({"fx", "fy", "cx", "cy"})
    fx, fy = intr.req("fx").float(0.0, open_lo=True), intr.req("fy").float(0.0, open_lo=True)
    cx, cy = intr.req("cx").float(), intr.req("cy").float()
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    dist = np.zeros(5)
    if (d := node.opt("distortion")) is not None:
        values = d.floats(choices_n=(4, 5))
        dist[: len(values)] = values
    R, t = np.eye(3), np.zeros(3)
    if (p := node.opt("pose")) is not None:
        p.reject_unknown({"rotation_deg", "position_m"})
        rvec = p.req("rotation_deg").floats(3) if p.has("rotation_deg") else [0.0, 0.0, 0.0]
        pos = p.req("position_m").floats(3) if p.has("position_m") else [0.0, 0.0, 0.0]
        R = rotation_from_vector_deg(rvec)
        t = -R @ np.asarray(pos)
    noise = node.child("noise_std").float(0.0) if node.has("noise_std") else 1.5
    thermal = ThermalSpec()
    if (th := node.opt("thermal")) is not None:
        allowed = ThermalSpec.__dataclass_fields__.keys()
        th.reject_unknown(allowed)
        thermal = ThermalSpec(**{k: th.child(k).float(0.0) for k in allowed if th.has(k)})
    faults = _parse_faults(node.opt("faults"))
    return SimCameraSpec(K, dist, R, t, noise, thermal, faults)


def _parse_faults(node: Node | None) -> SimFaults:
    """The optional ``sim.faults`` section (see :class:`SimFaults`); every key optional."""
    if node is None:
        return SimFaults()
    allowed = set(SimFaults.__dataclass_fields__)
    node.reject_unknown(allowed)
    kw: dict = {k: node.child(k).float(0.0) for k in allowed - {"outlier_rotation_deg"} if node.has(k)}
    for k in ("outlier_fraction", "half_turn_fraction"):
        if k in kw and not 0.0 <= kw[k] <= 1.0:
            raise node.error(f"must be a fraction in [0, 1], got {kw[k]:g}", k)
    if node.has("outlier_rotation_deg"):
        lo, hi = node.child("outlier_rotation_deg").floats(2)
        if not 0.0 <= lo <= hi:
            raise node.error(f"expected [min, max] with 0 <= min <= max, got [{lo:g}, {hi:g}]", "outlier_rotation_deg")
        kw["outlier_rotation_deg"] = (lo, hi)
    return SimFaults(**kw)
