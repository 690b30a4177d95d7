#!/usr/bin/env bash
# The README's generator figures, end to end: ingest FER2013 (the image-folder release), CK+ and
# JAFFE; align; train a reference classifier; train the cgan and the ddpm side by side (one core
# each); their quality reports; fill the same plan with augment, cgan and ddpm faces; the occluded
# test copies; and the benchmark of every arm over three seeds at the same number of steps.
#
#   FER2013=fer2013-images.tar.gz CKPLUS=CK+48/ JAFFE=jaffe/ OUT=/tmp/gen bash benchmarks/generators_fer2013.sh
#
# About 3.5 hours on 2 CPU cores; GENERATOR_MINUTES, STEPS, MODEL, ARMS (add mix) and TARGET change it;
# DEVICE=cuda uses a GPU.
set -euo pipefail
: "${FER2013:?the FER2013 image-folder release (.tar.gz or folder)}" "${CKPLUS:?CK+ folder}" "${JAFFE:?JAFFE folder}"
OUT=${OUT:-generators-fer2013}
GENERATOR_MINUTES=${GENERATOR_MINUTES:-52}
STEPS=${STEPS:-200}
MODEL=${MODEL:-mobilenet_v2}
ARMS=${ARMS:-original,rebalanced,augmented,cgan,ddpm}
TARGET=${TARGET:-min:3000}
DEVICE=${DEVICE:-auto}
fercurate=${FERCURATE:-fercurate}
WS=$OUT/ws
mkdir -p "$OUT"
step() { echo "=== $(date +%T) $*"; local start=$SECONDS; "$@"; echo "=== $((SECONDS - start)) s"; }

step "$fercurate" ingest fer2013 "$FER2013" -w "$WS"
step "$fercurate" ingest ckplus "$CKPLUS" -w "$WS"
step "$fercurate" ingest jaffe "$JAFFE" -w "$WS"
step "$fercurate" align -w "$WS"
step "$fercurate" benchmark "$OUT/reference" -w "$WS" --arms original --seeds 0 --epochs 1 --minutes 30 --model vgg \
    --device "$DEVICE"
classifier=$OUT/reference/original/best.pt

# Two trainings at once on 2 cores: one thread each, or they slow each other several-fold.
train() {
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$fercurate" generator train "$1" "$OUT/$1" -w "$WS" --source fer2013 \
        --max-minutes "$GENERATOR_MINUTES" --device "$DEVICE" "${@:2}" > "$OUT/$1.log" 2>&1
}
step train cgan & cgan=$!
step train ddpm --batch-size 32 --set 'block_out_channels=[16,32,32]' & ddpm=$!
wait "$cgan"; wait "$ddpm"  # each checked: set -e stops at a failed training

step "$fercurate" generator report "$OUT/cgan" -w "$WS" --classifier "$classifier" --per-class 300 --device "$DEVICE"
step "$fercurate" generator report "$OUT/ddpm" -w "$WS" --classifier "$classifier" --per-class 200 --sampling-steps 10 \
    --device "$DEVICE"
fill=(synthesize -w "$WS" --target "$TARGET" --max-synthetic-share 0.9)
step "$fercurate" "${fill[@]}" --method augment
step "$fercurate" "${fill[@]}" --method cgan --generator "$OUT/cgan" --device "$DEVICE"
step "$fercurate" "${fill[@]}" --method ddpm --generator "$OUT/ddpm" --sampling-steps 10 --device "$DEVICE"
step "$fercurate" synthesize -w "$WS" --occluded-test
step "$fercurate" benchmark "$OUT/bench" -w "$WS" --model "$MODEL" --steps "$STEPS" --minutes 10 --seeds 0,1,2 \
    --arms "$ARMS" --device "$DEVICE"
