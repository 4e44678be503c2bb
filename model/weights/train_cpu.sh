#!/bin/sh
# Reproduces model/weights/segmif_cpu.pt (the bundled weights) on CPU, in two stages.
# Run from the repository root; each run directory holds its simulator cache
# (rendered on first use: 900 / 1500 scenes at 800x600, ~8 / ~13 min),
# checkpoints (resume a stage with --resume) and its log; both logs are copied to
# model/weights/train_log.txt. Training time on 2 idle CPU cores at ~0.7 s per
# iteration: stage 1 ~16 min, stage 2 ~35 min (more on a shared machine).
#
# Segmentation only: the fusion network is SegMiF's residual network at its
# zero initialisation, i.e. exactly its parameter-free pyramid prior
# (rig.model.fusion.pyramid_prior), so the fused training images are what the
# shipped fusion produces and the guidance pass is skipped. Class-balanced
# cross-entropy (sqrt median-frequency weights), crops close to the inference
# scale (the segmenter sees 160x160 of a half-resolution image).
set -e
# Stage 1: 1,400 iterations from scratch on scenes 0-899.
nice -n 10 rig train --out runs/segmif_cpu --model cpu \
    --sim 900 --sim-size 800x600 \
    --rounds 1 --seg-iters 1400 --fusion-iters 0 \
    --batch-size 8 --crop 320 --scale-range 0.7 1.4 --class-weights sqrt \
    --seg-lr 1.5e-3 --seg-warmup-iters 50 \
    --seed 0 --threads 2 --checkpoint-every 200 --log-every 50 \
    --export runs/segmif_cpu/stage1.pt \
    "$@"
# Stage 2: 3,000 more iterations from stage 1 on scenes 0-1499 (a new poly schedule).
nice -n 10 rig train --out runs/segmif_cpu_s2 --model cpu --init runs/segmif_cpu/stage1.pt \
    --sim 1500 --sim-size 800x600 \
    --rounds 1 --seg-iters 3000 --fusion-iters 0 \
    --batch-size 8 --crop 320 --scale-range 0.7 1.4 --class-weights sqrt \
    --seg-lr 1e-3 --seg-warmup-iters 50 \
    --seed 2 --threads 2 --checkpoint-every 200 --log-every 50 \
    --export model/weights/segmif_cpu.pt
cat runs/segmif_cpu/train_log.txt runs/segmif_cpu_s2/train_log.txt > model/weights/train_log.txt
# Optional, NOT used for the shipped weights: fusion fine-tuning of the residual
# network on the RoadScene train part (never the held-back part the benchmark
# scores) plus the simulator scenes, segmenter frozen, L_s guiding the fusion.
# It makes the fusion network non-trivial (and inference ~1 s per 800x600 pair
# instead of ~0.15 s, since the guidance pass and the full-resolution network
# then run); whether it keeps the held-back wins has not been measured.
if [ -n "$RIG_FUSION_FINETUNE" ]; then
nice -n 10 rig train --out runs/segmif_cpu_ft --model cpu --init runs/segmif_cpu/final.pt \
    --data runs/segmif_cpu/sim_cache \
    --unlabelled ../shared/data/roadscene_train --unlabelled-part train \
    --rounds 1 --seg-iters 0 --fusion-iters 40 \
    --batch-size 4 --crop 192 --fusion-lr 1e-4 --class-weights sqrt \
    --grad-weight 1000 --dwa-window 10 --seed 1 --threads 2 \
    --checkpoint-every 40 --log-every 10 \
    --export runs/segmif_cpu_ft/segmif_cpu_ft.pt
fi
