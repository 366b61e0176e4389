# Sourced by the prepared GPU runs (bench/gpu_session.sh, bench/gpu_decode.sh): unbuffered
# output, $OUT, the carried wheels (.whl/) installed into /tmp/site, the repo on PYTHONPATH, and
# the card and library versions printed first.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fir-gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision, sklearn; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'sklearn', sklearn.__version__)"
