#!/usr/bin/env bash
# Unpack the generated OpenAPI models of KServe's Python SDK (kserve/models/*.py) into
# .tools/kserve-sdk/, from the kserve wheel on PyPI. tests/serve_k8s reads them with `ast`
# (never imports them) to validate the InferenceService that `sparsifyctl generate serve`
# prints against KServe's own types. Idempotent: a quick no-op when present.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${KSERVE_VERSION:-0.21.0}"
DEST="$PWD/.tools/kserve-sdk"
STAMP="$DEST/VERSION"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ] && [ -f "$DEST/kserve/models/v1beta1_inference_service.py" ]; then
  echo "kserve SDK models already present: $DEST (kserve $VERSION)"
  exit 0
fi

DOWNLOAD="$(mktemp -d)"
trap 'rm -rf "$DOWNLOAD"' EXIT
if ! "$PYTHON" -m pip download --quiet --no-deps --dest "$DOWNLOAD" "kserve==$VERSION" 2>"$DOWNLOAD/pip.log"; then
  echo "error: cannot download kserve==$VERSION from the package index (offline?): $(tail -n1 "$DOWNLOAD/pip.log");" \
       "connect to PyPI and rerun bash scripts/fetch-kserve-sdk.sh" >&2
  exit 1
fi
WHEEL="$(ls "$DOWNLOAD"/kserve-"$VERSION"-*.whl | head -n1)"

"$PYTHON" - "$WHEEL" "$DEST" "$VERSION" <<'PY'
import os, shutil, sys, tempfile, zipfile

wheel, dest, version = sys.argv[1:4]
parent = os.path.dirname(dest)
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".kserve-sdk-", dir=parent)
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.startswith("kserve/models/") and n.endswith(".py")]
    if not any(n.endswith("/v1beta1_inference_service.py") for n in names):
        sys.exit(f"error: {os.path.basename(wheel)} has no kserve/models/v1beta1_inference_service.py")
    for name in names:
        whl.extract(name, tmp)
with open(os.path.join(tmp, "VERSION"), "w") as fh:
    fh.write(version + "\n")
shutil.rmtree(dest, ignore_errors=True)
os.replace(tmp, dest)  # all or nothing
print(f"kserve SDK models installed: {dest} ({len(names)} files, kserve {version})")
PY
