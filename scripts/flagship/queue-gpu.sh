# The flagship's GPU queue on cores 0-7, one sweep after another; each resumes, so a queue cut short by the
# machine's end continues in a later call. Started by call.sh from its own copy of the tree.
cd "$(dirname "$0")/../.."
. scripts/flagship/common.sh
spec=params/h200-llama3.1-8b.yaml queue=gpu cores=0-7
sweep() {  # name, extra sweep flag or '', then cut.py overrides
  local name=$1 flag=$2; shift 2
  python3 scripts/flagship/cut.py $spec /tmp/r/specs/$name.yaml "$@"
  step "$name" python3 -m bench_kernels.cli sweep /tmp/r/specs/$name.yaml --reports-dir /tmp/r $flag
}
python3 scripts/flagship/cut.py $spec /tmp/r/specs/compiled-build.yaml 'runtimes=[compiled]' traffic=null
step compiled-build python3 scripts/flagship/build_stage.py /tmp/r/specs/compiled-build.yaml /tmp/r
# the workload shape at 100 runs: its TTFT and end-to-end p99 are percentiles, not the max of 5 runs
sweep compiled-workload --skip-build 'runtimes=[compiled]' 'batch_sizes=[1]' 'input_lens=[128]' repeats=100 traffic=null
sweep compiled '' 'runtimes=[compiled]' traffic=null
sweep reference-bf16 '' 'runtimes=[reference]' 'precisions=[bf16]' traffic=null
sweep traffic-bf16 '' 'runtimes=[reference, compiled]' 'precisions=[bf16]'
sweep traffic-compiled-fp8 '' 'runtimes=[compiled]' 'precisions=[fp8]'
for precision in fp8 int8 int4 int4-awq; do
  sweep reference-$precision '' 'runtimes=[reference]' "precisions=[$precision]" traffic=null
done
echo "$(date +%T) queue done" >> /tmp/r/logs/queue-gpu.txt
