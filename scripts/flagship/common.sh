# Sourced by every call script, from the project root on the GPU machine: nothing is measured unless the card is an
# H200 (the flagship never mixes cards); the wheels the image lacks; the finished rows of earlier calls seed /tmp/r,
# where every call's sweeps resume; save() packs /tmp/r into $OUT. The caller sets BENCH_KERNELS_GIT_SHA.
set -u
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$card" in *H200*) ;; *) echo "not an H200 ($card): nothing measured"; exit 3;; esac
: "${BENCH_KERNELS_GIT_SHA:?set it to the measured commit}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpuwheels/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site BENCH_KERNELS_GIT_SHA
mkdir -p /tmp/r/logs /tmp/r/specs
for run in h200-llama3.1-8b h200-smollm2-quality; do
  if [ -f reports/$run/results.csv ] && [ ! -d /tmp/r/$run ]; then cp -r reports/$run /tmp/r/; fi
done
save() {
  nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv > /tmp/r/logs/nvidia-smi.csv
  tar czf "$OUT/r.tgz" -C /tmp r
  for f in /tmp/r/logs/*.log; do echo "== $f"; grep -v "Warning\|warn(\|^ *$" "$f" | tail -n 4 | cut -c1-200; done
  cat /tmp/r/logs/queue-*.txt 2>/dev/null
}
step() {  # name, command...: one job of a queue ($queue names its log, $cores pins it), its exit status logged
  local name=$1 rc=0; shift
  echo "$(date +%T) start $name" >> /tmp/r/logs/queue-$queue.txt
  taskset -c "$cores" "$@" > /tmp/r/logs/$name.log 2>&1 || rc=$?
  echo "$(date +%T) end $name rc=$rc" >> /tmp/r/logs/queue-$queue.txt
}
wait_until() {  # seconds since this call began
  while [ "$SECONDS" -lt "$1" ]; do sleep 5; done
}
