#!/bin/sh
# Reproduces model/weights/segmif_cpu.pt (the bundled weights) on CPU.
# Run from the repository root; the run directory runs/segmif_cpu holds the
# simulator cache, checkpoints (resume with --resume) and the log, which is
# copied to model/weights/train_log.txt.
set -e
nice -n 10 rig train --out runs/segmif_cpu --model cpu \
    --sim 320 --sim-size 800x600 \
    --unlabelled ../shared/data/roadscene_train \
    --rounds 4 --seg-iters 150 --fusion-iters 40 \
    --batch-size 4 --crop 192 \
    --seg-lr 1e-3 --seg-warmup-iters 30 --fusion-lr 1e-3 \
    --grad-weight 1000 --dwa-window 10 --seed 0 --threads 2 \
    --checkpoint-every 25 --log-every 10 \
    --export model/weights/segmif_cpu.pt "$@"
cp runs/segmif_cpu/train_log.txt model/weights/train_log.txt
