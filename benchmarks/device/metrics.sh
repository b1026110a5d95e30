#!/bin/sh
# Metric throughput on a GPU machine staged by benchmarks/device/stage.py (see its docstring).
# DEVICE (default cuda) and FRAMES (default 4) may be set; PYTHON defaults to python3.
set -e
py=${PYTHON:-python3}
"$py" -c "import cascadevsr" 2>/dev/null || "$py" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
home=$(mktemp -d)
mkdir -p "$home/weights"
cp -r .device/big/home/weights/. .device/small/home/weights/. "$home/weights/"
for m in 1 4; do
    CASCADEVSR_HOME="$home" PYTHONPATH=.device/small/site "$py" benchmarks/metrics_throughput.py \
        --frames-npy .device/small/frames.npy --frames "${FRAMES:-4}" --batch-size "${FRAMES:-4}" \
        --methods "$m" --device "${DEVICE:-cuda}"
done
