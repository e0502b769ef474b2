#!/usr/bin/env bash
# Builds the operator and runner images with podman (no Docker engine needed).
#
#   bash scripts/build-images.sh                          # both, CUDA runner, public base images
#   bash scripts/build-images.sh --torch cpu runner       # the CPU runner only
#   bash scripts/build-images.sh --local-base --host-pip --torch cpu --torch-index https://pypi.org/simple \
#       --torch-spec 'torch==2.13.0+cpu' --tag test all  # what tests/images builds (no registry)
#
# Options:
#   --tag TAG           image tag (default dev): localhost/sparsify-{runner,operator}:TAG
#   --base IMAGE        BASE build argument (default: the Dockerfiles' python:3.11-slim)
#   --local-base        build the base with debootstrap instead (scripts/build-base-image.sh)
#   --torch cuda|cpu    the runner's torch variant (default cuda)
#   --torch-index URL   index torch is installed from (default: PyPI for cuda, PyTorch's CPU index)
#   --torch-spec SPEC   e.g. 'torch==2.13.0+cpu' (default 'torch torchvision')
#   --ort SPEC          onnxruntime distribution (default onnxruntime-gpu for cuda, onnxruntime for cpu)
#   --host-pip          use this machine's pip configuration in the build (pip.conf files, PIP_*
#                       variables, and the local wheel folders / file:// indexes / constraint and
#                       certificate files they name, mounted read-only for the build only: never
#                       in a layer)
#   --pip-args ARGS     extra pip arguments for every install in the build
#
# Prints one line per image: "<image> built in <s>s, <size>". Layers are cached by podman: a
# source change rebuilds only the small /opt/app layer; pyproject.toml changes rebuild the deps.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG=dev BASE="" LOCAL_BASE=0 TORCH=cuda TORCH_INDEX="" TORCH_SPEC="" ORT="" HOST_PIP=0 PIP_ARGS=""
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        --local-base) LOCAL_BASE=1; shift ;;
        --torch) TORCH="$2"; shift 2 ;;
        --torch-index) TORCH_INDEX="$2"; shift 2 ;;
        --torch-spec) TORCH_SPEC="$2"; shift 2 ;;
        --ort) ORT="$2"; shift 2 ;;
        --host-pip) HOST_PIP=1; shift ;;
        --pip-args) PIP_ARGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        runner|operator) targets+=("$1"); shift ;;
        all) targets+=(operator runner); shift ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(operator runner)
command -v podman >/dev/null || { echo "podman is not installed (apt-get install -y podman runc)" >&2; exit 1; }

# Sandboxes that refuse podman's default rlimits (containers.conf default_ulimits) need this;
# elsewhere it is harmless. An explicit CONTAINERS_CONF wins.
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    conf="${XDG_CACHE_HOME:-$HOME/.cache}/sparsify/containers.conf"
    mkdir -p "$(dirname "$conf")"
    printf '[containers]\ndefault_ulimits = []\n' >"$conf"
    export CONTAINERS_CONF="$conf"
fi

if [[ $LOCAL_BASE -eq 1 ]]; then
    BASE="$(bash "$ROOT/scripts/build-base-image.sh")"
fi

build_args=() volumes=()
[[ -n "$BASE" ]] && build_args+=(--build-arg "BASE=$BASE")
[[ -n "$PIP_ARGS" ]] && build_args+=(--build-arg "PIP_ARGS=$PIP_ARGS")

if [[ $HOST_PIP -eq 1 ]]; then
    # The effective pip configuration of this machine as one pip.conf, plus the local paths it
    # names; mounted at /etc/pip.conf (pip's site-wide file) for RUN steps only.
    pipdir="$(mktemp -d)"
    trap 'rm -rf "$pipdir"' EXIT
    python3 - "$pipdir" <<'PY'
import ast, os, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
lines = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                       text=True, check=True).stdout.splitlines()
sections: dict[str, dict[str, str]] = {}
for line in lines:
    key, _, raw = line.partition("=")
    section, _, name = key.partition(".")
    section = "global" if section == ":env:" else section
    value = ast.literal_eval(raw).replace("\n", " ")
    sections.setdefault(section, {})[name] = value
paths = set()
for values in sections.values():
    for value in values.values():
        for token in value.split():
            path = token.removeprefix("file://") if token.startswith("file:///") else token
            if not (path.startswith("/") and os.path.exists(path)):
                continue
            path = os.path.realpath(path)
            # a file:// index's pages link to ../../files/...: mount the repository, not simple/
            if token.startswith("file://") and os.path.basename(path.rstrip("/")) == "simple":
                path = os.path.dirname(path.rstrip("/"))
            paths.add(path)
text = "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in sections.items())
(out / "pip.conf").write_text(text)
(out / "paths").write_text("\n".join(sorted(paths)) + "\n")
PY
    volumes+=(--volume "$pipdir/pip.conf:/etc/pip.conf:ro")
    while IFS= read -r path; do
        [[ -n "$path" ]] && volumes+=(--volume "$path:$path:ro")
    done <"$pipdir/paths"
fi

for target in "${targets[@]}"; do
    args=("${build_args[@]}")
    if [[ $target == runner ]]; then
        args+=(--build-arg "TORCH=$TORCH")
        [[ -n "$TORCH_INDEX" ]] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
        [[ -n "$TORCH_SPEC" ]] && args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
        [[ -n "$ORT" ]] && args+=(--build-arg "ORT=$ORT")
    fi
    image="localhost/sparsify-$target:$TAG"
    start=$(date +%s)
    build=(podman build --isolation "${PODMAN_ISOLATION:-chroot}" --layers --network host
        -f "$ROOT/images/$target/Dockerfile" "${args[@]}")
    if [[ ${#volumes[@]} -gt 0 ]]; then
        # podman leaves an empty mount point of every --volume in each layer a RUN step makes:
        # the stages that use pip get the volumes, then the image's own stage is built (from
        # their cached layers) without any, so none of those paths reaches the image.
        "${build[@]}" "${volumes[@]}" --target app "$ROOT" >&2
    fi
    "${build[@]}" -t "$image" "$ROOT" >&2
    took=$(($(date +%s) - start))
    size=$(podman image inspect --format '{{.Size}}' "$image")
    echo "$image built in ${took}s, $((size / 1000000)) MB"
done
