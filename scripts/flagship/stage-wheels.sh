# The wheels the GPU image lacks for `bench-kernels sweep` (CPython 3.12), into .gpuwheels (git-ignored).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpuwheels/' .git/info/exclude 2>/dev/null || echo '/.gpuwheels/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpuwheels \
  pydantic==2.12.5 pydantic-core==2.41.5 annotated-types typing-inspection torchao==0.18.0
