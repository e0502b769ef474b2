"""A torchvision detector through the training pathway: SSDlite (MobileNetV3 backbone, its own
multibox loss) on the digits data at 96 px, INT8 with its decode in FP32, mAP in the report."""

from __future__ import annotations

import json

import pytest
import torch
from det_helpers import IMAGE_SIZE, run_args

pytestmark = pytest.mark.slow


def test_ssdlite_training_aware_int8(det_data, tmp_path, capsys):
    from sparsify_runner.models.detection import build_detector
    from sparsifyctl.cli import main

    torch.manual_seed(0)
    model = build_detector("ssdlite320_mobilenet_v3_large", 3, IMAGE_SIZE)
    checkpoint = tmp_path / "ssdlite.pt"
    torch.save({"arch_key": model.arch, "state_dict": model.state_dict()}, checkpoint)
    out = tmp_path / "out"
    args = run_args(
        "training-aware", checkpoint, det_data.root, out, "--optim-level", "0.2",
        "--train-kwargs", json.dumps({"epochs": 1, "batch_size": 16, "image_size": IMAGE_SIZE}),
        recipe={"qat": False},
    )  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None), capsys.readouterr().err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "quantization-only"
    assert report["settings"]["arch"] == "ssdlite320_mobilenet_v3_large"
    assert report["settings"]["image_size"] == IMAGE_SIZE
    assert report["baseline"]["map"] is not None and report["optimized"]["map"] is not None
    assert torch.load(out / "model.pt", weights_only=True)["arch_key"] == "ssdlite320_mobilenet_v3_large"
