# fedseg coordination server: Debian bookworm's python3 in a venv, everything installed
# offline from ./wheelhouse (`make wheelhouse` first). Build from the repository root:
#
#   docker build --network host -f docker/server.Dockerfile -t fedseg-server .
#
# (--network host only lets apt-get reach Debian's mirror; pip never touches an index.)
ARG BASE_IMAGE=debian:bookworm-slim

# --- the Python runtime both stages share (and the client image shares too) -------------
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
RUN groupadd --system --gid 10001 fedseg \
 && useradd --system --uid 10001 --gid fedseg --home-dir /var/lib/fedseg --no-create-home \
            --shell /usr/sbin/nologin fedseg \
 && install -d -o fedseg -g fedseg -m 0700 /var/lib/fedseg /run/fedseg

# --- builder: the venv with the pinned dependencies (the layer code changes keep) -------
FROM runtime AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ARG TORCH_VERSION=2.13.0
COPY wheelhouse/*.whl wheelhouse/requirements-server.txt /wheels/
RUN python3 -m venv /opt/fedseg \
 && /opt/fedseg/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "torch==${TORCH_VERSION}" \
 && /opt/fedseg/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        -r /wheels/requirements-server.txt \
 && rm -rf /opt/fedseg/lib/python3.11/site-packages/torch/include

# --- final: no compilers, no apt lists, no wheels; a non-root user ----------------------
# The metadata comes first: on a vfs engine every build step copies the whole filesystem,
# which is cheap before the venv arrives and slow after it.
FROM runtime
ENV PATH=/opt/fedseg/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FEDSEG_DATA_DIR=/var/lib/fedseg \
    FEDSEG_HOST=0.0.0.0 \
    FEDSEG_PORT=8000
VOLUME ["/var/lib/fedseg"]
EXPOSE 8000
WORKDIR /var/lib/fedseg
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/fedseg/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FEDSEG_PORT', '8000'), timeout=4).read()"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/fedseg/bin/python", "/usr/local/lib/fedseg/entrypoint.py"]
LABEL org.opencontainers.image.title="fedseg-server" \
      org.opencontainers.image.description="fedseg coordination server" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/fedseg /opt/fedseg
# fedseg itself last: a code change rebuilds only these layers.
COPY wheelhouse/fedseg/fedseg-*.whl docker/server-entrypoint.py /tmp/fedseg-install/
RUN /opt/fedseg/bin/pip install --no-cache-dir --no-index --no-deps /tmp/fedseg-install/fedseg-*.whl \
 && /opt/fedseg/bin/pip check \
 && install -D -m 0755 /tmp/fedseg-install/server-entrypoint.py /usr/local/lib/fedseg/entrypoint.py \
 && rm -rf /tmp/fedseg-install
USER fedseg:fedseg
