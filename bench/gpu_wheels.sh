#!/usr/bin/env bash
# Wheels that bench/bench_gpu.py needs and a bare GPU machine (python3 with torch, timm,
# pyarrow, scipy, onnxruntime; no network) lacks: polars, pydantic, soundfile, soxr and their
# own dependencies, at the versions of uv.lock.
#
#   here:  bench/gpu_wheels.sh download 3.11   # -> bench/.gpu_wheels/ (ignored), about 57 MiB
#   there: bench/gpu_wheels.sh install          # -> bench/.gpu_site/, then put it on PYTHONPATH
#
# The folder travels with the code (carry it: the whole carry must stay under 64 MiB; the
# polars runtime wheel alone is 50 MiB). `make bench-gpu` runs `install` then the benchmark.
set -euo pipefail
cd "$(dirname "$0")"
WHEELS=.gpu_wheels
SITE=.gpu_site
PACKAGES=(polars polars-runtime-32 pydantic pydantic-core annotated-types typing-inspection typing-extensions
          soundfile cffi pycparser soxr)

pinned() {  # "name==version" for each package, from uv.lock
  for name in "${PACKAGES[@]}"; do
    version=$(awk -v n="$name" '$0 == "name = \"" n "\"" {getline; gsub(/version = |"/, ""); print; exit}' ../uv.lock)
    [[ -n "$version" ]] || { echo "$name not in uv.lock" >&2; exit 1; }
    echo "$name==$version"
  done
}

case "${1:-}" in
  download)
    python_version="${2:?usage: gpu_wheels.sh download PYTHON_VERSION (the GPU machine's, e.g. 3.11)}"
    mkdir -p "$WHEELS"
    python3 -m pip download --only-binary=:all: --no-deps --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      --python-version "$python_version" --implementation cp -d "$WHEELS" $(pinned)
    du -sh "$WHEELS"
    ;;
  install)
    missing=$(python3 - <<'PY'
import importlib.util
print(" ".join(m for m in ("polars", "pydantic", "soundfile", "soxr") if importlib.util.find_spec(m) is None))
PY
)
    if [[ -z "$missing" ]]; then echo "nothing to install"; exit 0; fi
    python3 -m pip install --no-index --no-deps --find-links "$WHEELS" --target "$SITE" --quiet $(pinned)
    echo "installed into bench/$SITE (missing were: $missing)"
    ;;
  *)
    echo "usage: gpu_wheels.sh download PYTHON_VERSION | install" >&2
    exit 2
    ;;
esac
