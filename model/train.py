"""Interactive training of SegMiF (Sec. 3.4 and 5 of the paper).

Training alternates, for ``rounds`` rounds, between

- ``seg_iters`` **segmentation iterations**: the fusion network is frozen, the
  pair is fused (initial + interactive pass, no gradient) and SegFormer is
  trained on the fused image with cross-entropy;
- ``fusion_iters`` **fusion iterations**: SegFormer is frozen (eval mode) and the
  fusion network is trained with ``λ_1 L_f + λ_2 L_s``, where ``L_s`` back-
  propagates through the frozen segmenter into the fusion network and
  ``λ_1, λ_2`` are the dynamic weight factors, updated every ``dwa_window``
  iterations from the window-mean loss history.

Optimisers are Adam with poly learning-rate decay (power 0.9); the segmenter
warms up linearly from ``seg_warmup_lr`` over ``seg_warmup_iters``. Unlabelled
pairs (e.g. RoadScene) only enter fusion iterations, where ``L_s`` ignores
them.

Multi-GPU: launch with ``torchrun --nproc_per_node=N -m rig.cli train ...``;
each rank gets its shard of the data (``DistributedSampler``) and gradients are
synchronised by ``DistributedDataParallel``. Only rank 0 logs and writes
checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from rig.errors import RigError
from rig.model.checkpoint import check_state_dict, model_from_checkpoint, read_checkpoint, save_checkpoint
from rig.model.color import rgb_to_ycrcb
from rig.model.data import Augment, PairDataset, find_pairs, render_sim_dataset, split_part
from rig.model.losses import DynamicWeightAverage, fusion_loss, segmentation_loss
from rig.model.segmif import SegMiF, get_config


@dataclass
class TrainConfig:
    """Everything ``rig train`` needs; stored in checkpoints and the run directory (``config.json``)."""

    out: str = "runs/segmif"
    model: str = "cpu"
    classes: str = "fmb"
    labelled: list[str] = field(default_factory=list)  # dataset roots with labels
    unlabelled: list[str] = field(default_factory=list)  # dataset roots used for fusion only
    split: str = "train"
    sim_scenes: int = 0  # labelled simulator scenes rendered into OUT/sim_cache
    sim_size: tuple[int, int] = (400, 300)
    rounds: int = 8
    seg_iters: int = 10_000
    fusion_iters: int = 5_000
    batch_size: int = 8
    crop: int = 360
    seg_lr: float = 8e-5
    seg_warmup_lr: float = 1e-6
    seg_warmup_iters: int = 3_000
    fusion_lr: float = 1e-4
    fusion_min_lr: float = 1e-8
    poly_power: float = 0.9
    grad_weight: float = 100.0  # η of L_f (not given in the paper; see losses.fusion_loss)
    task_preference: tuple[float, float] = (2.0, 2.0)  # η_i of the dynamic weights
    temperature: float = 2.0
    dwa_window: int = 50
    seed: int = 0
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch default
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 200
    init: str | None = None  # start from these weights
    pretrained_encoder: str | None = None  # NVlabs SegFormer mit_bN.pth ImageNet weights for the encoder
    class_weighting: str = "none"  # "none" or "sqrt": CE weights (median freq / freq)^0.5 from the labelled set
    scale_range: tuple[float, float] = (0.5, 2.0)  # random resize of the augmentation
    unlabelled_part: str = "all"  # "all", "train" or "held-back" (rig.model.data.split_part)

    def __post_init__(self) -> None:
        self.sim_size = tuple(self.sim_size)
        self.task_preference = tuple(self.task_preference)
        self.scale_range = tuple(self.scale_range)
        if self.class_weighting not in ("none", "sqrt"):
            raise RigError(f"class weighting must be 'none' or 'sqrt', got {self.class_weighting!r}",
                           key="class-weights")


def class_weights(dataset: PairDataset, num_classes: int) -> torch.Tensor:
    """Per-class CE weights ``sqrt(median frequency / frequency)`` over the labelled pixels of ``dataset``,
    clipped to [0.2, 10]; classes without pixels get weight 1."""
    import numpy as np

    from rig.model.data import read_sample

    counts = np.zeros(num_classes, dtype=np.int64)
    for record in dataset.records:
        labels = read_sample(record, num_classes).labels
        if labels is not None:
            counts += np.bincount(labels.ravel(), minlength=256)[:num_classes]
    present = counts > 0
    w = np.ones(num_classes)
    if present.any():
        freq = counts / counts.sum()
        w[present] = np.clip(np.sqrt(np.median(freq[present]) / freq[present]), 0.2, 10.0)
    return torch.tensor(w, dtype=torch.float32)


def poly_lr(step: int, total: int, base: float, end: float = 0.0, power: float = 0.9,
            warmup_steps: int = 0, warmup_lr: float = 0.0) -> float:
    """Learning rate at ``step``: linear warm-up ``warmup_lr -> base`` then poly decay ``base -> end`` at ``total``."""
    if step < warmup_steps:
        return warmup_lr + (base - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return end + (base - end) * (1.0 - progress) ** power


def schedule(rounds: int, seg_iters: int, fusion_iters: int) -> list[tuple[int, str, int]]:
    """The alternating phases ``(round, phase, iterations)``: per round segmentation then fusion
    (zero-length phases dropped)."""
    return [(r + 1, p, n) for r in range(rounds) for p, n in (("seg", seg_iters), ("fusion", fusion_iters)) if n > 0]


class InteractiveStep(nn.Module):
    """One training step's forward: returns the phase's losses (a module so DDP can wrap it)."""

    def __init__(self, model: SegMiF, grad_weight: float, class_weight: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.grad_weight = grad_weight
        self.class_weight = class_weight

    def forward(self, visible: torch.Tensor, lwir: torch.Tensor, labels: torch.Tensor, phase: str,
                weights: tuple[float, float] = (1.0, 1.0)) -> dict[str, torch.Tensor]:
        m = self.model
        if phase == "seg":
            with torch.no_grad():
                m.segmenter.eval()  # the initial pass sees the deterministic encoder
                _, fused_rgb = m.fuse(visible, lwir)
            m.segmenter.train()
            loss = segmentation_loss(m.segment(fused_rgb, labels.shape[-2:]), labels, weight=self.class_weight)
            return {"loss": loss, "seg": loss.detach()}
        m.segmenter.eval()
        with torch.no_grad():
            features = m.semantic_features(visible, lwir)
        fused_y, fused_rgb = m.fuse(visible, lwir, features)
        lf = fusion_loss(fused_y, rgb_to_ycrcb(visible)[:, :1], lwir, self.grad_weight)
        ls = segmentation_loss(m.segment(fused_rgb, labels.shape[-2:]), labels, weight=self.class_weight)
        return {"loss": weights[0] * lf.total + weights[1] * ls, "fusion": lf.total.detach(), "seg": ls.detach(),
                "ssim": lf.ssim.detach(), "mse": lf.mse.detach(), "grad": lf.grad.detach()}


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), world, local)


def _loader(dataset: PairDataset, cfg: TrainConfig, dist: _Dist, seed: int) -> Iterator[dict]:
    """Endless shuffled batches; every epoch re-seeds the augmentation."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        if dist.world > 1:
            sampler = DistributedSampler(dataset, dist.world, dist.rank, shuffle=True, seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        batch = max(1, cfg.batch_size // dist.world)
        yield from DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                              persistent_workers=False)
        epoch += 1


def build_datasets(cfg: TrainConfig, num_classes: int, log: Callable[[str], None]) -> tuple[PairDataset | None, PairDataset]:
    """``(labelled, all)`` training sets: labelled roots + simulator scenes, and those plus unlabelled roots."""
    labelled, unlabelled = [], []
    for root in cfg.labelled:
        layout, records = find_pairs(root, cfg.split)
        missing = [r.name for r in records if r.label is None]
        if missing:
            raise RigError(f"{len(missing)} pair(s) have no label (pass unlabelled data with --unlabelled)", path=root)
        log(f"labelled data: {root} ({layout}, {len(records)} pairs)")
        labelled += records
    if cfg.sim_scenes:
        cache = Path(cfg.out) / "sim_cache"
        log(f"rendering/reusing {cfg.sim_scenes} simulator scenes ({cfg.sim_size[0]}x{cfg.sim_size[1]}) in {cache}")
        render_sim_dataset(cache, cfg.sim_scenes, cfg.sim_size, seed=cfg.seed)
        labelled += find_pairs(cache, None, "fmb")[1][: cfg.sim_scenes]
    for root in cfg.unlabelled:
        layout, records = find_pairs(root, cfg.split)
        records = split_part(records, cfg.unlabelled_part)
        log(f"unlabelled data: {root} ({layout}, {len(records)} pairs, part {cfg.unlabelled_part})")
        unlabelled += [r.__class__(r.name, r.visible, r.infrared, None) for r in records]
    if not labelled and not unlabelled:
        raise RigError("no training data: give --data, --sim or --unlabelled", key="data")
    aug = Augment(crop=cfg.crop, scale=cfg.scale_range)
    lab_ds = PairDataset(labelled, num_classes, aug, cfg.seed) if labelled else None
    return lab_ds, PairDataset(labelled + unlabelled, num_classes, aug, cfg.seed + 1)


def train(cfg: TrainConfig, resume: bool = False, progress: Any = None,
          log: Callable[[str], None] = print) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint ``OUT/final.pt``."""
    from rig.model.api import MODEL_VERSION, resolve_device

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = _setup_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    logfile = out / "train_log.txt"

    def emit(line: str) -> None:
        if dist.main:
            log(line)
            with logfile.open("a") as f:
                f.write(line + "\n")

    torch.manual_seed(cfg.seed)
    config = get_config(cfg.model, classes=cfg.classes)
    model = SegMiF(config)
    if cfg.pretrained_encoder and not resume:  # as the SegFormer and SegMiF authors start (a resume has them already)
        from rig.model.reference import load_pretrained_encoder

        ignored = load_pretrained_encoder(model, cfg.pretrained_encoder)
        log(f"encoder initialised from {cfg.pretrained_encoder} ({len(ignored)} keys ignored: classifier head)")
    if cfg.init and not resume:
        init = model_from_checkpoint(cfg.init)
        check_state_dict(model, init.state_dict(), cfg.init)
        model.load_state_dict(init.state_dict())
    model.to(device)
    seg_opt = torch.optim.Adam(model.segmenter.parameters(), lr=cfg.seg_lr)
    fusion_opt = torch.optim.Adam(model.fusion.parameters(), lr=cfg.fusion_lr)
    dwa = DynamicWeightAverage(cfg.task_preference, cfg.temperature)
    state = {"phase_index": 0, "phase_step": 0, "seg_step": 0, "fusion_step": 0}

    if resume and last.is_file():
        payload = read_checkpoint(last)
        check_state_dict(model, payload["state_dict"], last)
        model.load_state_dict(payload["state_dict"])
        seg_opt.load_state_dict(payload["seg_optimizer"])
        fusion_opt.load_state_dict(payload["fusion_optimizer"])
        dwa.history = [list(h) for h in payload["dwa_history"]]
        state.update(payload["train_state"])
        torch.set_rng_state(payload["rng_state"])
        emit(f"resumed from {last} at phase {state['phase_index']} step {state['phase_step']}")
    elif resume:
        emit(f"nothing to resume in {out}; starting fresh")
    if dist.main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        emit(f"model {config.name}: {sum(p.numel() for p in model.parameters()):,} parameters; "
             f"device {device}; world size {dist.world}")

    lab_ds, all_ds = build_datasets(cfg, config.num_classes, emit)
    weight = None
    if cfg.class_weighting == "sqrt" and lab_ds is not None:
        weight = class_weights(lab_ds, config.num_classes).to(device)
        emit("class weights: " + " ".join(f"{w:.2f}" for w in weight.tolist()))
    step_module: nn.Module = InteractiveStep(model, cfg.grad_weight, weight)
    if dist.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    phases = schedule(cfg.rounds, cfg.seg_iters if lab_ds is not None else 0, cfg.fusion_iters)
    seg_total = sum(n for _, p, n in phases if p == "seg")
    fusion_total = sum(n for _, p, n in phases if p == "fusion")
    seg_batches = _loader(lab_ds, cfg, dist, cfg.seed) if lab_ds is not None else None
    all_batches = _loader(all_ds, cfg, dist, cfg.seed + 1)
    total = sum(n for _, _, n in phases)
    done = sum(n for _, _, n in phases[: state["phase_index"]]) + state["phase_step"]
    task = progress.add_task("training", total=total, completed=done) if progress is not None else None

    def save(path: Path) -> None:
        if dist.main:
            save_checkpoint(path, model, MODEL_VERSION, train_config=json.loads(json.dumps(asdict(cfg))),
                            seg_optimizer=seg_opt.state_dict(), fusion_optimizer=fusion_opt.state_dict(),
                            dwa_history=[list(h) for h in dwa.history], train_state=dict(state),
                            rng_state=torch.get_rng_state())

    window: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    while state["phase_index"] < len(phases):
        round_no, phase, length = phases[state["phase_index"]]
        batches = seg_batches if phase == "seg" else all_batches
        opt = seg_opt if phase == "seg" else fusion_opt
        params = list((model.segmenter if phase == "seg" else model.fusion).parameters())
        while state["phase_step"] < length:
            if phase == "seg":
                lr = poly_lr(state["seg_step"], seg_total, cfg.seg_lr, 0.0, cfg.poly_power,
                             cfg.seg_warmup_iters, cfg.seg_warmup_lr)
            else:
                lr = poly_lr(state["fusion_step"], fusion_total, cfg.fusion_lr, cfg.fusion_min_lr, cfg.poly_power)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = next(batches)
            weights = tuple(dwa.weights())
            losses = step_module(batch["visible"].to(device), batch["lwir"].to(device), batch["labels"].to(device),
                                 phase, weights)
            seg_opt.zero_grad(set_to_none=True)
            fusion_opt.zero_grad(set_to_none=True)
            if dist.world > 1:
                losses["loss"].backward()
            else:  # only the phase's network needs gradients
                losses["loss"].backward(inputs=params)
            opt.step()
            state["phase_step"] += 1
            state[f"{phase}_step"] += 1
            for k, v in losses.items():
                if k != "loss":
                    window.setdefault(f"{phase}/{k}", []).append(float(v))
            if phase == "fusion" and state["fusion_step"] % cfg.dwa_window == 0:
                dwa.record([_mean(window["fusion/fusion"][-cfg.dwa_window:]), _mean(window["fusion/seg"][-cfg.dwa_window:])])
            if state["phase_step"] % cfg.log_every == 0 or state["phase_step"] == length:
                parts = " ".join(f"{k.split('/')[1]}={_mean(v):.4f}" for k, v in window.items())
                lam = f" λ=({weights[0]:.3f},{weights[1]:.3f})" if phase == "fusion" else ""
                emit(f"round {round_no} {phase:6s} it {state['phase_step']:5d}/{length} lr={lr:.2e}{lam} {parts} "
                     f"[{time.perf_counter() - t0:.0f}s]")
                window = {}
            if state["phase_step"] % cfg.checkpoint_every == 0:
                save(last)
            if task is not None:
                progress.advance(task)
        state["phase_index"] += 1
        state["phase_step"] = 0
        save(last)
    final = out / "final.pt"
    if dist.main:
        save_checkpoint(final, model, MODEL_VERSION, train_config=json.loads(json.dumps(asdict(cfg))))
        emit(f"done: {final} [{time.perf_counter() - t0:.0f}s]")
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return final


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def export_weights(checkpoint: str | Path, dest: str | Path, model_version: str) -> Path:
    """Strip training state from a checkpoint: only config and weights (what the package ships)."""
    model = model_from_checkpoint(checkpoint)
    return save_checkpoint(dest, model, model_version)
