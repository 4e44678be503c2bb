"""Small simulated two-camera rigs for tests (rig-file dicts, as a user would write them)."""

from __future__ import annotations

from typing import Sequence

LWIR_POSE = {"rotation_deg": [0.6, -0.8, 0.3], "position_m": [0.12, 0.05, 0.0]}


def small_rig_dict(name: str = "small", visible: Sequence[int] = (640, 400), lwir: Sequence[int] = (320, 256),
                   visible_fx: float = 567.0, lwir_fx: float = 371.0, lwir_pose: dict | None = LWIR_POSE,
                   visible_format: str = "BayerRG8", fps: tuple[float, float] = (30, 60)) -> dict:
    """A visible + LWIR ``driver: sim`` rig; principal points at the image centres; a fresh dict each call."""

    def camera(cam: str, role: str, size, fx, fmt, rate, pose) -> dict:
        sim = {"intrinsics": {"fx": fx, "fy": fx, "cx": size[0] / 2, "cy": size[1] / 2}}
        if pose is not None:
            sim["pose"] = {k: list(v) for k, v in pose.items()}
        return {"name": cam, "role": role, "driver": "sim", "resolution": list(size), "pixel_format": fmt, "fps": rate,
                "sim": sim}

    return {"rig": name, "cameras": [camera("visible", "visible", visible, visible_fx, visible_format, fps[0], None),
                                     camera("lwir", "lwir", lwir, lwir_fx, "Mono16", fps[1], lwir_pose)]}
