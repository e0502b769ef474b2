"""Example images for a detection report: baseline and optimized detections side by side on a
few validation images (ground truth dashed), so a person sees what the numbers mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .postprocess import Detections

SHOW_SCORE = 0.25
"""Detections below this score are not drawn (the mAP evaluation keeps them all)."""
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
SCALE = 3
"""Small inputs are drawn enlarged so labels stay readable."""


def _panel(image: np.ndarray, dets: Detections, truth, classes: list[str], title: str):
    from PIL import Image, ImageDraw

    rgb = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    scale = SCALE if max(rgb.shape[:2]) < 400 else 1
    panel = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(panel)
    if truth is not None:
        for box in np.asarray(truth[0]).reshape(-1, 4) * scale:
            x1, y1, x2, y2 = box.tolist()
            for i in range(int(x1), int(x2), 6):  # dashed white ground-truth box
                draw.line([(i, y1), (min(i + 3, x2), y1)], fill="white")
                draw.line([(i, y2), (min(i + 3, x2), y2)], fill="white")
            for j in range(int(y1), int(y2), 6):
                draw.line([(x1, j), (x1, min(j + 3, y2))], fill="white")
                draw.line([(x2, j), (x2, min(j + 3, y2))], fill="white")
    keep = dets.scores >= SHOW_SCORE
    for box, score, label in zip(dets.boxes[keep] * scale, dets.scores[keep], dets.labels[keep], strict=True):
        color = PALETTE[int(label) % len(PALETTE)]
        draw.rectangle(box.tolist(), outline=color, width=2)
        name = classes[int(label)] if int(label) < len(classes) else str(int(label))
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=color)
    draw.text((4, 4), title, fill="yellow")
    return panel


def draw_examples(
    images: list[np.ndarray],
    baseline: list[Detections],
    optimized: list[Detections],
    truth: list | None,
    classes: list[str],
    out_dir: Path,
) -> list[Path]:
    """One PNG per image: baseline (left) and optimized (right) detections scoring >= 0.25,
    ground truth dashed in white. Returns the files written."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, image in enumerate(images):
        gt = truth[i] if truth is not None else None
        left = _panel(image, baseline[i], gt, classes, "baseline")
        right = _panel(image, optimized[i], gt, classes, "optimized")
        canvas = Image.new("RGB", (left.width + right.width + 8, left.height), (40, 40, 40))
        canvas.paste(left, (0, 0))
        canvas.paste(right, (left.width + 8, 0))
        path = out_dir / f"val_{i:02d}.png"
        canvas.save(path)
        written.append(path)
    return written
