#!/bin/sh
# Reproduces model/weights/segmif_cpu.pt (the bundled weights) on CPU.
# Run from the repository root; the run directory runs/segmif_cpu holds the
# simulator cache, checkpoints (resume with --resume) and the logs, which are
# copied to model/weights/train_log.txt. About 15 minutes on 2 idle CPU cores.
set -e
nice -n 10 rig train --out runs/segmif_cpu --model cpu \
    --sim 320 --sim-size 800x600 \
    --unlabelled ../shared/data/roadscene_train \
    --rounds 4 --seg-iters 150 --fusion-iters 40 \
    --batch-size 4 --crop 192 \
    --seg-lr 1e-3 --seg-warmup-iters 30 --fusion-lr 1e-3 \
    --grad-weight 1000 --dwa-window 10 --seed 0 --threads 2 \
    --checkpoint-every 25 --log-every 10 \
    "$@"
# Stage 2: fusion-only fine-tuning (80 iterations; the segmenter stays frozen
# but L_s on the simulator labels still guides the fusion network).
nice -n 10 rig train --out runs/segmif_cpu_ft --model cpu --init runs/segmif_cpu/final.pt \
    --data runs/segmif_cpu/sim_cache \
    --unlabelled ../shared/data/roadscene_train \
    --rounds 1 --seg-iters 0 --fusion-iters 80 \
    --batch-size 4 --crop 192 --fusion-lr 3e-4 \
    --grad-weight 1000 --dwa-window 10 --seed 1 --threads 2 \
    --checkpoint-every 40 --log-every 10 \
    --export model/weights/segmif_cpu.pt
{ echo "# stage 1: sh model/weights/train_cpu.sh (first rig train command)"; cat runs/segmif_cpu/train_log.txt;
  echo "# stage 2: fusion fine-tuning (second rig train command)"; cat runs/segmif_cpu_ft/train_log.txt; } > model/weights/train_log.txt
