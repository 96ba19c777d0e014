#!/usr/bin/env bash
# Collect every wheel the images need into ./wheelhouse, on a machine that can reach the
# package index, so that the images build with `pip install --no-index` (air-gapped sites,
# build containers without index access).
#
#   wheelhouse/*.whl        third-party wheels: torch (CPU build), server and client deps
#   wheelhouse/requirements-{server,client}.txt   the resolved pins, less torch and fedseg
#   wheelhouse/fedseg/      fedseg's own wheel, kept apart so a code change rebuilds only the
#                           images' last layer, not the dependency layers
#   wheelhouse/cuda/        only with TORCH_VARIANT=cuda: PyTorch's CUDA build and its nvidia-*
#                           wheels from PyPI, for building the GPU client image offline
#
# The wheels are for the images' Python: Debian bookworm's python3 (CPython 3.11, x86_64,
# glibc 2.36), so run this with a CPython 3.11 on linux x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-.venv/bin/pip}
PYTHON=${PYTHON:-.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
TORCH_VARIANT=${TORCH_VARIANT:-cpu}
OUT=wheelhouse

tag=$("$PYTHON" -c 'import sys, platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
if [[ "$tag" != "cp311-x86_64" ]]; then
    echo "wheelhouse: need CPython 3.11 on x86_64 to match Debian bookworm's python3, got $tag" >&2
    exit 1
fi

mkdir -p "$OUT/fedseg" "$OUT/cuda"
cat >"$OUT/cuda/README" <<'TXT'
Wheels of PyTorch's CUDA build for building the GPU client image offline
(`make wheelhouse TORCH_VARIANT=cuda`). Empty: the GPU image installs torch from PyPI.
TXT
rm -f "$OUT"/fedseg/fedseg-*.whl "$OUT"/fedseg-*.whl
# A fixed timestamp makes the wheel byte-identical while the code is unchanged, so Docker's
# build cache keeps the image layers above it.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)} \
    "$PIP" wheel --quiet --no-deps --wheel-dir "$OUT/fedseg" . 2>"$OUT/.fedseg-build.log" \
    || { cat "$OUT/.fedseg-build.log" >&2; exit 1; }
rm -f "$OUT/.fedseg-build.log"
wheel=$(ls "$OUT"/fedseg/fedseg-*.whl)

# Third-party wheels: the CPU torch first so the resolver keeps it for fedseg's torch>=2.4.
# (grep drops the notes this machine's pip configuration prints about local index paths)
"$PIP" wheel --quiet --wheel-dir "$OUT" --prefer-binary "$TORCH" "${wheel}[server,client]" \
    2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
rm -f "$OUT"/fedseg-*.whl   # pip copies fedseg's own wheel next to its dependencies

# Pinned dependency lists per image (torch and fedseg itself are installed on their own), so
# the images install exactly what was resolved here, in a layer that code changes keep.
# The server image also gets httpx: `fedseg` mounts the admin commands, which need it, and
# `docker exec <server> fedseg admin ...` is the handiest admin console there is.
for extra in server client; do
    also=()
    [[ "$extra" == server ]] && also=(httpx)
    "$PIP" install --quiet --dry-run --ignore-installed --no-index \
        --find-links "$OUT" --find-links "$OUT/fedseg" --report "$OUT/.report-$extra.json" \
        "fedseg[$extra]" "${also[@]}" 2>/dev/null
    "$PYTHON" - "$OUT/.report-$extra.json" "$OUT/requirements-$extra.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = sorted(
    f"{item['metadata']['name']}=={item['metadata']['version']}"
    for item in report["install"]
    if item["metadata"]["name"].lower() not in {"fedseg", "torch"}
)
with open(sys.argv[2], "w") as out:
    out.write("# written by docker/wheelhouse.sh: fedseg's dependencies less torch, pinned\n")
    out.write("\n".join(pins) + "\n")
PY
    rm -f "$OUT/.report-$extra.json"
done

if [[ "$TORCH_VARIANT" == "cuda" ]]; then
    # PyPI's default linux torch wheel is the CUDA build; it pulls the nvidia-* runtime wheels.
    # No pip configuration here: a find-links holding the CPU build (as on our machines)
    # would win over PyPI's CUDA build of the same version.
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$PIP" download --quiet --only-binary=:all: --dest "$OUT/cuda" \
        --index-url "${TORCH_CUDA_INDEX_URL:-https://pypi.org/simple}" \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp "$TORCH"
fi

n=$(ls "$OUT"/*.whl | wc -l)
size=$(du -sh "$OUT" | cut -f1)
echo "wheelhouse: $n third-party wheels + $(basename "$wheel") in $OUT/ ($size)"
