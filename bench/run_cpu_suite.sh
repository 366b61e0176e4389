#!/usr/bin/env bash
# The CPU benchmarks behind bench/RESULTS.md, one after another (never in parallel: on a
# 2-core machine concurrent runs make every timing meaningless). About 110 minutes; the first
# run of search_real also embeds its 75,620 views of real photos (about 25 minutes, cached after).
#   bash bench/run_cpu_suite.sh [log folder]
set -u
cd "$(dirname "$0")/.."
LOGS=${1:-bench-logs}
mkdir -p "$LOGS"
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
run() {
  local name=$1; shift
  echo "== $name: $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
  local t0; t0=$(date +%s)
  "$PY" -m "$@" > "$LOGS/$name.txt" 2>&1
  echo "   rc=$? in $(( $(date +%s) - t0 )) s"
}
run router bench.bench_router --sizes 5000,10000
run search_hard bench.bench_search --data hard --plan 77000x2048,300000x2048 --fp16 77000x2048,300000x2048 --ef 64,128,256
run graph_storage bench.bench_graph_storage --queries 300
run search_pca_auto bench.bench_search --data hard --plan 77000x2048 --no-fp32-index --fp16 77000x2048 --pca 77000x2048 --pca-storage fp16 --pca-min-recall 0.99 --ef 128,192,256,default --exact-queries 3 --queries 200
run search_real bench.bench_search_real
run search_tight bench.bench_search --data tight --plan 10000x2048,77000x2048,300000x2048 --fp16 10000x2048,77000x2048,300000x2048 --ef 32,48,64,128
# 1M x 2048 in 24 GB: the catalogue generated in float16 and only the fp16-stored graphs built
run search_1m bench.bench_search --data tight --plan 1000000x2048 --catalogue-dtype float16 --no-fp32-index --fp16 1000000x2048 --ef 64,128,192,256,384 --exact-queries 3
run precision bench.bench_precision --backbone efficientnet_lite0 --weights imagenet --compile
run precision_r50 bench.bench_precision --backbone resnet50 --weights none --compile --gallery 300 --queries 100
run indexing bench.bench_indexing --images 256 --size 160 --batch 16 --rounds 3 --workers 1,2
run openmp_spin bench.bench_openmp_spin
run service bench.bench_service --backend both --queries 30 --burst 50
