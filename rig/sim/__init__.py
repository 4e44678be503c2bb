"""The simulated rig: ground-truth cameras that render boards and road scenes in both modalities.

Every stage uses it: capture drives its simulated camera driver
(:mod:`rig.capture.sim_camera`) from a :class:`SimWorld`, calibration renders
board views with known poses, registration tests check against its geometry,
and the model trains on its perfectly registered, labelled scenes. Everything
is deterministic from a seed.

Public surface:

- board views: :func:`board_pose_plan` (joint views), :func:`coverage_pose_plan` (one camera's image corners), :class:`BoardViewRenderer` (-> :class:`BoardView`),
  :class:`VisibleLook`, :class:`ThermalLook`
- road scenes: :func:`make_scene`, :func:`render_scene`, :func:`render_registered`
  (-> :class:`RegisteredSample`), :data:`FMB_CLASSES`, :data:`VARIANTS`
- worlds for the camera driver: :class:`SimWorld`, :class:`DriveWorld`, :class:`BoardWorld`
- ground truth of a ``sim`` camera spec: :func:`camera_model`, :func:`pose_in_camera`

Modules: :mod:`~rig.sim.render` (board ray casting, LWIR counts),
:mod:`~rig.sim.scene` (road scenes), :mod:`~rig.sim.views` (board pose plans and
views), :mod:`~rig.sim.plan` (coverage pose plans), :mod:`~rig.sim.worlds` (keyframed worlds).
"""

from rig.sim.plan import coverage_pose_plan
from rig.sim.render import ThermalLook, VisibleLook
from rig.sim.scene import FMB_CLASSES, VARIANTS, RegisteredSample, make_scene, render_registered, render_scene
from rig.sim.views import BoardView, BoardViewRenderer, board_pose_plan, camera_model, pose_in_camera
from rig.sim.worlds import BoardWorld, DriveWorld, RigMotion, SimWorld

__all__ = [
    "FMB_CLASSES", "VARIANTS", "BoardView", "BoardViewRenderer", "BoardWorld", "DriveWorld", "RegisteredSample", "RigMotion",
    "SimWorld", "ThermalLook", "VisibleLook", "board_pose_plan", "camera_model", "coverage_pose_plan", "make_scene", "pose_in_camera",
    "render_registered", "render_scene",
]
