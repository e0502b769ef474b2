#!/usr/bin/env bash
# Builds a local base image (Debian bookworm minbase + python3.11 + venv) for the image tests,
# where no registry can be reached to pull python:3.11-slim or a CUDA image.
#
#   bash scripts/build-base-image.sh            # prints the image name (localhost/sparsify-base:bookworm)
#
# Cached twice: the root filesystem tarball under ${SPARSIFY_IMAGE_CACHE:-~/.cache/sparsify/images}
# (survives `podman system reset`) and the imported image in podman's own storage. A warm call
# is a no-op. Needs root, debootstrap and podman (scripts/install-test-deps.sh installs them).
set -euo pipefail

IMAGE="${SPARSIFY_BASE_IMAGE:-localhost/sparsify-base:bookworm}"
CACHE="${SPARSIFY_IMAGE_CACHE:-${HOME}/.cache/sparsify/images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="${CACHE}/bookworm-python3.11-rootfs.tar"
# Bump when the package list changes so stale caches are rebuilt.
RECIPE="v1 minbase python3 python3-venv ca-certificates passwd"

if podman image exists "$IMAGE" \
    && [[ "$(podman image inspect --format '{{ index .Labels "sparsify.base-recipe" }}' "$IMAGE" 2>/dev/null)" == "$RECIPE" ]]; then
    echo "$IMAGE"
    exit 0
fi

mkdir -p "$CACHE"
if [[ ! -s "$TARBALL" || "$(cat "$TARBALL.recipe" 2>/dev/null)" != "$RECIPE" ]]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
    work="$(mktemp -d "${CACHE}/rootfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    echo "debootstrap bookworm into $work (a few minutes, once)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # Nothing an image needs at run time: package caches, apt lists, docs, logs.
    rm -rf "$work/root"/var/cache/apt/* "$work/root"/var/lib/apt/lists/* "$work/root"/var/log/* \
        "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/usr/share/locale/* \
        "$work/root"/tmp/* "$work/root"/root/.cache
    tar -C "$work/root" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    echo "$RECIPE" >"$TARBALL.recipe"
fi

podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change "LABEL sparsify.base-recipe=\"$RECIPE\"" \
    "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
