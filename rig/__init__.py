"""rig: visible + LWIR camera rig software.

Stages (data flows one way): ``rig.capture`` -> session (``rig.session``) ->
``rig.calibration`` -> ``rig.registration`` -> ``rig.model``.
"""

__version__ = "0.1.0"
