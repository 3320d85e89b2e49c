# How the H200 70B report was made, one device call per subset, from the project root:
#   bash scripts/run-subset.sh NAME SED-EXPRESSIONS... rewrites
# params/h100x2-llama3.1-70b.yaml (shapes, precisions, runtimes) and sweeps it; .gpu/prior70b held the earlier
# calls' results.csv and samples.jsonl (carried with .whl: pydantic and its dependencies), so resume joined them.
name=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 BENCH_KERNELS_CACHE=/tmp/bkcache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $OUT/gpu.txt
mkdir -p /tmp/r/h100x2-llama3.1-70b && { test -f /tmp/r/h100x2-llama3.1-70b/results.csv || cp .gpu/prior70b/* /tmp/r/h100x2-llama3.1-70b/; }
sed "$@" params/h100x2-llama3.1-70b.yaml > /tmp/$name.yaml && grep -v "^#" /tmp/$name.yaml | tee $OUT/spec-$name.yaml
timeout -s INT 540 python3 -m bench_kernels.cli sweep /tmp/$name.yaml --reports-dir /tmp/r --skip-build 2>&1 | grep -v "Loading\|Warning" | tee $OUT/sweep-$name.log
cp /tmp/r/h100x2-llama3.1-70b/results.csv /tmp/r/h100x2-llama3.1-70b/samples.jsonl $OUT/ 2>/dev/null
tail -c 20000 /tmp/r/h100x2-llama3.1-70b/errors.log > $OUT/errors.log 2>/dev/null
true
