# fedseg hospital client: trains on the site's data, mounted read-only at /data, and talks
# only outward to the coordination server. Build from the repository root after
# `make wheelhouse`:
#
#   docker build --network host -f docker/client.Dockerfile -t fedseg-client .            # GPU
#   docker build --network host -f docker/client.Dockerfile --build-arg TORCH_VARIANT=cpu \
#       -t fedseg-client:cpu .                                                            # CPU
#
# TORCH_VARIANT=cuda (default) installs PyTorch's CUDA build from PyPI, which carries its own
# CUDA runtime (the host needs only the NVIDIA driver and the NVIDIA Container Toolkit); the
# wheels are taken from wheelhouse/cuda/ instead when they are there (offline builds).
# TORCH_VARIANT=cpu installs the CPU build from the wheelhouse. Everything else always comes
# from the wheelhouse; --network host only lets apt-get reach Debian's mirror.
ARG BASE_IMAGE=debian:bookworm-slim

# --- the Python runtime (same instructions as the server image: the layers are shared) --
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
RUN groupadd --system --gid 10001 fedseg \
 && useradd --system --uid 10001 --gid fedseg --home-dir /var/lib/fedseg --no-create-home \
            --shell /usr/sbin/nologin fedseg \
 && install -d -o fedseg -g fedseg -m 0700 /var/lib/fedseg /run/fedseg

# --- builder: the venv with torch and the pinned dependencies ---------------------------
FROM runtime AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
COPY wheelhouse/cuda/ /wheels/cuda/
COPY wheelhouse/*.whl wheelhouse/requirements-client.txt /wheels/
RUN set -eu; \
    python3 -m venv /opt/fedseg; \
    pip="/opt/fedseg/bin/pip install --no-cache-dir"; \
    case "$TORCH_VARIANT" in \
      cpu)  $pip --no-index --find-links /wheels "torch==${TORCH_VERSION}" ;; \
      cuda) if ls /wheels/cuda/torch-*.whl >/dev/null 2>&1; then \
              $pip --no-index --find-links /wheels/cuda "torch==${TORCH_VERSION}"; \
            else \
              $pip --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
            fi ;; \
      *)    echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    $pip --no-index --find-links /wheels -r /wheels/requirements-client.txt; \
    rm -rf /opt/fedseg/lib/python3.11/site-packages/torch/include

# --- final: no compilers, no apt lists, no wheels; a non-root user ----------------------
# The metadata comes first: on a vfs engine every build step copies the whole filesystem,
# which is cheap before the venv arrives and slow after it.
FROM runtime
ARG TORCH_VARIANT=cuda
ENV PATH=/opt/fedseg/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDSEG_STATE_DIR=/var/lib/fedseg \
    FEDSEG_DATA_DIR=/data \
    FEDSEG_DEVICE=auto \
    FEDSEG_TORCH_VARIANT=${TORCH_VARIANT} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# The site's keys, credential and progress. /data is deliberately not a volume: without a
# mount the entrypoint stops and says so, instead of training on an empty anonymous volume.
VOLUME ["/var/lib/fedseg"]
WORKDIR /var/lib/fedseg
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fedseg/bin/python", "/usr/local/lib/fedseg/entrypoint.py"]
LABEL org.opencontainers.image.title="fedseg-client" \
      org.opencontainers.image.description="fedseg hospital client (torch: ${TORCH_VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/fedseg /opt/fedseg
# fedseg itself last: a code change rebuilds only these layers.
COPY wheelhouse/fedseg/fedseg-*.whl docker/client-entrypoint.py /tmp/fedseg-install/
RUN /opt/fedseg/bin/pip install --no-cache-dir --no-index --no-deps /tmp/fedseg-install/fedseg-*.whl \
 && /opt/fedseg/bin/pip check \
 && install -D -m 0755 /tmp/fedseg-install/client-entrypoint.py /usr/local/lib/fedseg/entrypoint.py \
 && install -d -m 0755 /data \
 && rm -rf /tmp/fedseg-install
USER fedseg:fedseg
