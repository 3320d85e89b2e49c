# TensorRT-RTX builds on cores 8-15: RTX builds for its portable target, so past the model load only the host works.
cd "$(dirname "$0")/../.."
. scripts/flagship/common.sh
. /tmp/trtx/env.sh
queue=trt cores=8-15
python3 scripts/flagship/cut.py params/h200-llama3.1-8b.yaml /tmp/r/specs/tensorrt.yaml 'runtimes=[tensorrt]' traffic=null
step tensorrt python3 -m bench_kernels.cli sweep /tmp/r/specs/tensorrt.yaml --reports-dir /tmp/r
