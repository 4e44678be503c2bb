"""How the calibration path spends its time, checked without timing asserts (timings: the benchmark).

* ``sim_source`` renders in a process pool with one renderer per worker: the
  images must not depend on the number of workers, and it reports its cost.
"""

from __future__ import annotations

import numpy as np

from rig.boards import load_board
from rig.calibration.sources import sim_source


def test_sim_source_workers_give_identical_views(sim_rig):
    board = load_board("ir_board")
    one, two = {}, {}
    a = sim_source(sim_rig, board, 2, seed=4, workers=1, stats=one)
    b = sim_source(sim_rig, board, 2, seed=4, workers=2, stats=two)
    assert a.views == b.views == ["sim000", "sim001"] and a.cameras == b.cameras
    for v in a.views:
        for c in a.cameras:
            assert np.array_equal(a.load(v, c), b.load(v, c))
    assert one["workers"] == 1 and two["workers"] == 2
    for s in (one, two):
        assert s["render_s"] > 0 and s["render_cpu_s"] > 0


def test_sim_source_progress_per_view(sim_rig):
    board = load_board("ir_board")
    steps: list[int] = []
    src = sim_source(sim_rig, board, 3, seed=4, workers=2, progress=steps.append, cameras=["lwir"])
    assert steps == [1, 1, 1] and src.cameras == ["lwir"]
    assert set(src.truth["sim002"]["corners"]) == {"lwir"} and len(src.truth["sim002"]["pose"]) == 2
