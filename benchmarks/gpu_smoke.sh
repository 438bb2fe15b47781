#!/usr/bin/env bash
# The GPU smoke run: run once on a machine with an NVIDIA GPU and its driver, from a checkout.
#
#   bash benchmarks/gpu_smoke.sh [OUT_DIR]        # default OUT_DIR: gpu-smoke
#
# 1. installs bodyrt with the GPU extra of the driver's CUDA major (gpu-cu12 or gpu-cu13) and the
#    test tools, without the CPU onnxruntime (only one ONNX Runtime build may be installed);
# 2. runs the tests marked gpu (parity of both GPU backends with the CPU backend, fp32 and fp16);
# 3. exports the demo bundle and builds its fp16 TensorRT engines on this GPU (through Polygraphy);
# 4. bodyrt check: every stage on TensorRT fp16 and ONNX Runtime CUDA against ONNX Runtime fp32;
# 5. benchmarks/gpu_smoke.py: 2 -> 3 -> 2 persons with and without CUDA graphs compared, the pipeline
#    called from a worker thread, a frame with nobody in it, and end-to-end latency at batch 1, 2, 4, 8.
# Everything goes to OUT_DIR: the logs, check.json and gpu-smoke.json. Send OUT_DIR back.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-gpu-smoke}")"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_smoke.log") 2>&1

command -v nvidia-smi >/dev/null || { echo "gpu_smoke: nvidia-smi not found: this needs an NVIDIA GPU and driver"; exit 1; }
nvidia-smi
CUDA_MAJOR="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -1)"
case "$CUDA_MAJOR" in
  12) EXTRA=gpu-cu12 ;;
  13) EXTRA=gpu-cu13 ;;
  *) echo "gpu_smoke: the driver reports CUDA '$CUDA_MAJOR'; bodyrt supports CUDA 12 and 13 drivers"; exit 1 ;;
esac
echo "gpu_smoke: driver CUDA $CUDA_MAJOR -> extra $EXTRA"

pip uninstall -y -q onnxruntime onnxruntime-gpu || true   # one ONNX Runtime build at a time
pip install -q ".[test-tools,$EXTRA]"
python - <<'PY'
import onnxruntime
print("gpu_smoke: onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY

status=0
python -m pytest tests -m gpu -p no:cacheprovider -q -rs 2>&1 | tee "$OUT/pytest_gpu.log" || status=1

BUNDLE="$(python -c 'import sys; from bodyrt.export.demo import demo_bundle; print(demo_bundle(sys.argv[1]))' "$OUT/demo")"
python -m bodyrt.export.tensorrt --bundle "$BUNDLE" --precision fp16
bodyrt check --bundle "$BUNDLE" --candidate tensorrt:gpu --candidate cuda:gpu --json "$OUT/check.json" || status=1
python benchmarks/gpu_smoke.py --bundle "$BUNDLE" --out "$OUT/gpu-smoke.json" || status=1

echo "gpu_smoke: done (exit $status); send back $OUT"
exit $status
