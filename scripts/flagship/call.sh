# One device call of the H200 flagship (reports/h200-llama3.1-8b) and its quality run (reports/h200-smollm2-quality),
# from the project root: BENCH_KERNELS_GIT_SHA=<commit> bash scripts/flagship/call.sh MODE [SECONDS]
#   gpu            carry [.gpuwheels, .trtx/a]: stage TensorRT-RTX's first half, start the GPU queue
#   trt            carry [.gpuwheels, .trtx/b]: install TensorRT-RTX, start the build queue
#   wait           any carry: let the queues run
#   quality-stage  carry [.gpuwheels, .smol/a]: stage the embedded model's first half
#   quality        carry [.gpuwheels, .smol/b]: install it and sweep params/h200-smollm2-quality.yaml
# Each returns after SECONDS (default 560) with /tmp/r packed into $OUT/r.tgz; calls must follow each other within
# the machine's 30 s idle release, or /tmp and the queues are gone (resume then joins the rows already saved).
# .gpuwheels comes from scripts/flagship/stage-wheels.sh, .trtx and .smol from ../shared/tools. The tracked tree and
# the carry must stay under 64 MiB together: move the other reports/ folders out of the tree for the calls.
mode=$1 seconds=${2:-560}
. scripts/flagship/common.sh
case "$mode" in
  gpu)
    bash .trtx/a/stage.sh
    rm -rf /tmp/code && cp -r . /tmp/code  # the queue runs from its own copy: this call's folder goes when it ends
    setsid nohup bash /tmp/code/scripts/flagship/queue-gpu.sh > /tmp/r/logs/queue-gpu.out 2>&1 < /dev/null & ;;
  trt)
    bash .trtx/b/install.sh
    setsid nohup bash /tmp/code/scripts/flagship/queue-trt.sh > /tmp/r/logs/queue-trt.out 2>&1 < /dev/null & ;;
  quality-stage)
    bash .smol/a/stage.sh; save; exit 0 ;;
  quality)
    bash .smol/b/install.sh
    export PYTHONPATH=$PYTHONPATH:/tmp/smol
    python3 -m bench_kernels.cli sweep params/h200-smollm2-quality.yaml --reports-dir /tmp/r > /tmp/r/logs/quality.log 2>&1 &
    quality=$!
    while [ "$SECONDS" -lt "$seconds" ] && kill -0 $quality 2>/dev/null; do sleep 5; done
    seconds=0 ;;
  wait) ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
wait_until "$seconds"
save
