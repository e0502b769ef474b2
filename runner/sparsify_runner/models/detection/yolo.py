"""A YOLOv8-style anchor-free detector, re-implemented for this project from the published
architecture (Ultralytics YOLOv8, 2023): a CSP backbone of Conv-BN-SiLU and C2f blocks with
SPPF, a PAN neck (top-down then bottom-up, C2f blocks) and a decoupled head at strides
8/16/32 whose box branch predicts each side's distance to the anchor point as a
16-bin distribution (DFL). Training uses task-aligned assignment (TAL), BCE for classes,
CIoU + DFL for boxes. It follows the contract in ``base.py``.

Sizes (width / depth multipliers on the YOLOv8 base channels 64-128-256-512-1024 and
block repeats 3-6-6-3, channels capped at 1024 before scaling):

* ``yolov8-pico``: 0.125 / 0.33, a tiny model for tests and CI
* ``yolov8n``: 0.25 / 0.33
* ``yolov8s``: 0.5 / 0.33

Ultralytics weights are not loadable. Their ``.pt`` files are pickled whole-model objects:
reading one executes code and needs the ``ultralytics`` package (AGPL-3.0), so the runner's
``torch.load(weights_only=True)`` refuses them. Saving ``model.state_dict()`` from one's own
ultralytics environment gives a plain tensor dict, but its key names (``model.0.conv.weight``,
``model.22.cv2.0.0.conv.weight``...) are not ours, and the project ships no converter. Train
or fine-tune this model instead; its state dict keys (``backbone.stage3.1.blocks.0.cv1.conv.
weight``, ``head.cls.0.2.bias``...) are stable across versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError

STRIDES = (8, 16, 32)
REG_MAX = 16
LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
CLASS_PRIOR = 0.01
"""Initial class probability (RetinaNet's focal-loss prior): almost every anchor is
background, so starting near 0.01 keeps the first steps' BCE from swamping everything."""


@dataclass(frozen=True)
class YoloSize:
    width: float
    depth: float
    max_channels: int = 1024


YOLO_ARCHS: dict[str, YoloSize] = {
    "yolov8-pico": YoloSize(width=0.125, depth=0.33),
    "yolov8n": YoloSize(width=0.25, depth=0.33),
    "yolov8s": YoloSize(width=0.5, depth=0.33),
}


def _channels(base: int, size: YoloSize) -> int:
    """Base channels scaled by the width multiplier, rounded up to a multiple of 8."""
    return max(8, math.ceil(min(base, size.max_channels) * size.width / 8) * 8)


def _repeats(base: int, size: YoloSize) -> int:
    return max(1, round(base * size.depth))


# --------------------------------------------------------------------------- building blocks


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)  # PyTorch momentum 0.1: short runs need it
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs, with a residual connection when ``shortcut`` (backbone) is set."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(channels, channels, 3)
        self.cv2 = ConvBNAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block: two 1x1 convs give two halves, a chain of bottlenecks runs on the second,
    and every intermediate output (not just the last, as in C3) is concatenated and fused by
    a 1x1 conv, for a richer gradient flow. YOLOv8 computes both halves with one conv and
    splits its output; two convs compute exactly the same function, and keep the halves'
    widths independent, so dependency-aware channel pruning can shrink each of them (a
    split at a fixed width breaks when the conv before it loses channels)."""

    def __init__(self, c_in: int, c_out: int, repeats: int, shortcut: bool) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1a = ConvBNAct(c_in, hidden, 1)
        self.cv1b = ConvBNAct(c_in, hidden, 1)
        self.blocks = nn.ModuleList(Bottleneck(hidden, shortcut) for _ in range(repeats))
        self.cv2 = ConvBNAct((2 + repeats) * hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.cv1a(x), self.cv1b(x)]
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (receptive fields 5, 9, 13)
    concatenated with their input, which equals SPP's parallel pools at a third of the cost."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)
        self.cv2 = ConvBNAct(4 * hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.cv2(torch.cat([x, p1, p2, self.pool(p2)], dim=1))


# --------------------------------------------------------------------------- backbone, neck, head


class Backbone(nn.Module):
    """CSP-Darknet: outputs the stride 8, 16 and 32 feature maps (P3, P4, P5)."""

    def __init__(self, size: YoloSize) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (_channels(c, size) for c in (64, 128, 256, 512, 1024))
        n3, n6 = _repeats(3, size), _repeats(6, size)
        self.stem = ConvBNAct(3, c1, 3, 2)  # stride 2
        self.stage2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), C2f(c2, c2, n3, shortcut=True))  # 4
        self.stage3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), C2f(c3, c3, n6, shortcut=True))  # 8
        self.stage4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), C2f(c4, c4, n6, shortcut=True))  # 16
        self.stage5 = nn.Sequential(
            ConvBNAct(c4, c5, 3, 2), C2f(c5, c5, n3, shortcut=True), SPPF(c5, c5)
        )  # 32
        self.out_channels = (c3, c4, c5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        return p3, p4, self.stage5(p4)


class PANNeck(nn.Module):
    """Path aggregation: upsample P5 into P4 and P3 (top-down), then downsample back
    (bottom-up), fusing with C2f blocks (no residuals) at each step."""

    def __init__(self, channels: tuple[int, int, int], size: YoloSize) -> None:
        super().__init__()
        c3, c4, c5 = channels
        n = _repeats(3, size)
        self.top_down4 = C2f(c5 + c4, c4, n, shortcut=False)
        self.top_down3 = C2f(c4 + c3, c3, n, shortcut=False)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, n, shortcut=False)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, n, shortcut=False)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = feats
        t4 = self.top_down4(torch.cat([self._up(p5), p4], dim=1))
        n3 = self.top_down3(torch.cat([self._up(t4), p3], dim=1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], dim=1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], dim=1))
        return n3, n4, n5


class DetectHead(nn.Module):
    """Decoupled anchor-free head: per level, a box branch (two 3x3 convs, then a 1x1 conv to
    4 x ``reg_max`` distance-bin logits) and a class branch (two 3x3 convs, then a 1x1 conv
    to one logit per class). Outputs are flattened level by level: stride 8 first."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.reg_max = reg_max
        box_hidden = max(16, channels[0] // 4, 4 * reg_max)
        cls_hidden = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, box_hidden, 3),
                ConvBNAct(box_hidden, box_hidden, 3),
                nn.Conv2d(box_hidden, 4 * reg_max, 1),
            )
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, cls_hidden, 3),
                ConvBNAct(cls_hidden, cls_hidden, 3),
                nn.Conv2d(cls_hidden, num_classes, 1),
            )
            for c in channels
        )
        self.reset_biases()

    def reset_biases(self) -> None:
        """Class logits start at the prior (see CLASS_PRIOR); box bins start flat."""
        prior = -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR)
        for branch in self.cls:
            nn.init.constant_(branch[-1].bias, prior)
        for branch in self.box:
            nn.init.constant_(branch[-1].bias, 1.0)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: (B, 4 * reg_max, H, W) box-bin logits and (B, C, H, W) class logits."""
        return [(b(f), c(f)) for b, c, f in zip(self.box, self.cls, feats, strict=True)]


def make_anchors(image_size: int, strides: tuple[int, ...] = STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (N, 2) at grid-cell centres in input pixels, and each one's stride (N, 1),
    in the head's output order (stride 8 row-major first)."""
    points, stride_col = [], []
    for s in strides:
        n = image_size // s
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        points.append(torch.stack([xx, yy], dim=-1).reshape(-1, 2))
        stride_col.append(torch.full((n * n, 1), float(s)))
    return torch.cat(points), torch.cat(stride_col)


# --------------------------------------------------------------------------- the detector


class YoloDetector(nn.Module):
    """YOLOv8-style detector; see the module docstring and ``models/detection/base.py``."""

    def __init__(self, arch: str, num_classes: int, image_size: int) -> None:
        super().__init__()
        if arch not in YOLO_ARCHS:
            raise InputError(f"unknown YOLO architecture '{arch}'; use one of {', '.join(YOLO_ARCHS)}")
        if num_classes < 1:
            raise InputError(f"a detector needs at least one class, got num_classes={num_classes}")
        if image_size < 32 or image_size % 32:
            raise InputError(
                f"image size {image_size} does not suit {arch}: use a multiple of 32 (e.g. 320, 640)"
            )
        size = YOLO_ARCHS[arch]
        self.arch, self.num_classes, self.image_size = arch, num_classes, image_size
        self.reg_max = REG_MAX
        self.backbone = Backbone(size)
        self.neck = PANNeck(self.backbone.out_channels, size)
        self.head = DetectHead(self.backbone.out_channels, num_classes, REG_MAX)
        self.cells = tuple((image_size // s) ** 2 for s in STRIDES)
        self.num_anchors = sum(self.cells)
        points, strides = make_anchors(image_size)
        # Derived from image_size, not learned: kept out of the state dict, exported as constants.
        self.register_buffer("anchor_points", points, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)

    def class_head_keys(self) -> list[str]:
        """State dict keys whose shapes can depend on ``num_classes``: the class branches
        (their width is max(P3 channels, classes), as in YOLOv8, so for many classes the
        whole branch, not only its last conv, changes). A checkpoint trained on other
        classes loads everything else."""
        return [k for k in self.state_dict() if k.startswith("head.cls.")]

    def _raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and images.shape[-2:] != (self.image_size, self.image_size):
            raise InputError(
                f"{self.arch} was built for {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}; resize the input or build the model for that size"
            )
        levels = self.head(self.neck(self.backbone(images)))
        # Flatten each level with its known cell count (not a traced shape), stride 8 first.
        pairs = list(zip(levels, self.cells, strict=True))
        dist = torch.cat([d.reshape(-1, 4 * self.reg_max, n) for (d, _), n in pairs], dim=2)
        logits = torch.cat([c.reshape(-1, self.num_classes, n) for (_, c), n in pairs], dim=2)
        return dist.transpose(1, 2), logits.transpose(1, 2)

    def decode(self, dist: torch.Tensor) -> torch.Tensor:
        """Box-bin logits (B, N, 4 * reg_max) -> xyxy boxes in pixels (B, N, 4), clipped to
        the image: each side's distance is the expectation over bins 0..reg_max-1 (in
        strides) of its softmax."""
        # Constant target shape (-1, N, ...) so the exported graph needs no Shape ops here.
        ltrb = dist.reshape(-1, self.num_anchors, 4, self.reg_max).softmax(dim=-1) @ self.bins
        ltrb = ltrb * self.strides
        boxes = torch.cat([self.anchor_points - ltrb[..., :2], self.anchor_points + ltrb[..., 2:]], dim=-1)
        return boxes.clamp(0.0, float(self.image_size))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist, logits = self._raw(images)
        return self.decode(dist), logits.sigmoid()

    def train_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``boxes``, ``scores`` as ``forward``, plus what the loss needs: ``cls_logits``
        (B, N, C), ``box_dist`` (B, N, 4, reg_max) bin logits, ``anchor_points`` (N, 2) and
        ``strides`` (N, 1) in pixels."""
        dist, logits = self._raw(images)
        return {
            "boxes": self.decode(dist),
            "scores": logits.sigmoid(),
            "cls_logits": logits,
            "box_dist": dist.reshape(dist.shape[0], dist.shape[1], 4, self.reg_max),
            "anchor_points": self.anchor_points,
            "strides": self.strides,
        }

    def loss(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Weighted sum of the box (CIoU), class (BCE) and DFL losses; see ``loss_items``."""
        return self.loss_items(outputs, targets)["loss"]

    def loss_items(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``loss`` (the scalar to minimize) and its unweighted parts ``box``, ``cls``, ``dfl``."""
        return yolo_loss(outputs, targets, self.num_classes, self.reg_max)

    def prediction_layers(self) -> list[str]:
        """The last conv of every box and class branch: its output channels are the outputs'
        meaning (distance bins, classes), so pruning leaves them whole."""
        return [f"head.{branch}.{i}.2" for branch in ("box", "cls") for i in range(len(self.head.box))]


def build_yolo(arch: str, num_classes: int, image_size: int) -> YoloDetector:
    return YoloDetector(arch, num_classes, image_size)


# --------------------------------------------------------------------------- assignment and loss


def _pad_targets(
    targets: list[dict[str, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets as padded tensors: boxes (B, M, 4), labels (B, M), valid mask (B, M)."""
    m = max((len(t["labels"]) for t in targets), default=0)
    b = len(targets)
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.long, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        k = len(t["labels"])
        if k:
            boxes[i, :k] = t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
            labels[i, :k] = t["labels"].to(device=device, dtype=torch.long).reshape(-1)
            valid[i, :k] = True
    return boxes, labels, valid


def _pairwise_iou(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """IoU of each image's GT boxes (B, M, 4) with its predicted boxes (B, N, 4) -> (B, M, N)."""
    gt, pred = gt[:, :, None], pred[:, None]
    lt = torch.maximum(gt[..., :2], pred[..., :2])
    rb = torch.minimum(gt[..., 2:], pred[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_gt = (gt[..., 2:] - gt[..., :2]).clamp(min=0).prod(-1)
    area_pred = (pred[..., 2:] - pred[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_gt + area_pred - inter + 1e-9)


@torch.no_grad()
def task_aligned_assign(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    anchor_points: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_valid: torch.Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task-aligned assignment (TOOD / YOLOv8).

    For every GT box, the anchor points whose centre lies inside it are candidates, ranked
    by the alignment metric ``score(gt class) ** alpha * IoU(pred, gt) ** beta``; the top
    ``topk`` become positives. An anchor claimed by several GT boxes keeps the one its box
    overlaps most. Class targets are soft: the alignment metric, rescaled per GT box so that
    its best anchor gets that anchor's IoU.

    Returns the positive mask (B, N), the target boxes (B, N, 4) and the soft class
    targets (B, N, C).
    """
    b, n, c = scores.shape
    m = gt_boxes.shape[1]
    target_boxes = torch.zeros(b, n, 4, device=boxes.device)
    target_scores = torch.zeros(b, n, c, device=scores.device)
    if m == 0:
        return torch.zeros(b, n, dtype=torch.bool, device=scores.device), target_boxes, target_scores

    # Candidates: anchor centre strictly inside the GT box, for real (non-padding) GT boxes.
    x, y = anchor_points[:, 0], anchor_points[:, 1]
    inside = (
        (x[None, None] > gt_boxes[..., 0:1])
        & (y[None, None] > gt_boxes[..., 1:2])
        & (x[None, None] < gt_boxes[..., 2:3])
        & (y[None, None] < gt_boxes[..., 3:4])
        & gt_valid[..., None]
    )  # (B, M, N)

    iou = _pairwise_iou(gt_boxes, boxes.detach()) * inside
    cls_score = scores.detach().gather(2, gt_labels[:, None, :].expand(b, n, m)).transpose(1, 2)
    metric = cls_score.pow(alpha) * iou.pow(beta) * inside

    # Rank with outside anchors below every inside one, so ties at 0 never crowd them out.
    top_idx = metric.masked_fill(~inside, -1.0).topk(min(topk, n), dim=-1).indices
    positive = torch.zeros_like(inside).scatter_(-1, top_idx, True) & inside  # (B, M, N)

    # One GT per anchor: the one with the highest IoU among those claiming it.
    multi = positive.sum(1, keepdim=True) > 1
    best_gt = F.one_hot(iou.argmax(1), m).transpose(1, 2).bool()
    positive = torch.where(multi, best_gt & inside, positive)
    fg = positive.any(1)  # (B, N)
    gt_index = positive.float().argmax(1)  # (B, N)

    target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, n, 4))
    target_labels = gt_labels.gather(1, gt_index)

    metric = metric * positive
    best_metric = metric.amax(-1, keepdim=True)
    best_iou = (iou * positive).amax(-1, keepdim=True)
    norm = (metric * best_iou / (best_metric + 1e-9)).amax(1)  # (B, N)
    target_scores = F.one_hot(target_labels, c).float() * (norm * fg)[..., None]
    return fg, target_boxes, target_scores


def _dfl_loss(dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: cross-entropy towards the two bins around each continuous
    target distance, weighted by proximity. ``dist`` (P, 4, R) logits, ``target`` (P, 4)."""
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    logp = dist.log_softmax(-1)
    loss = -(logp.gather(-1, left[..., None]).squeeze(-1) * w_left) - (
        logp.gather(-1, right[..., None]).squeeze(-1) * (1 - w_left)
    )
    return loss.mean(-1)


def yolo_loss(
    outputs: dict[str, torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    reg_max: int = REG_MAX,
) -> dict[str, torch.Tensor]:
    """YOLOv8 loss: TAL assignment, then BCE over all anchors and classes, CIoU and DFL over
    the positives, each normalized by the sum of the soft class targets (about the number of
    positives), weighted by ``LOSS_GAINS``. Images without boxes only add background BCE.

    Unlike Ultralytics, the sum is not multiplied by the batch size: the value is a
    per-image-average-like scale whatever the batch, so learning rates transfer."""
    logits = outputs["cls_logits"]
    # In float32 whatever the forward ran in: areas of 640 px boxes overflow float16.
    with torch.autocast(logits.device.type, enabled=False):
        return _yolo_loss_fp32(
            logits.float(),
            outputs["box_dist"].float(),
            outputs["boxes"].float(),
            outputs["anchor_points"].float(),
            outputs["strides"].float(),
            targets,
            num_classes,
            reg_max,
        )


def _yolo_loss_fp32(
    logits: torch.Tensor,
    dist: torch.Tensor,
    boxes: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    reg_max: int,
) -> dict[str, torch.Tensor]:
    from torchvision.ops import complete_box_iou_loss

    if len(targets) != logits.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} images")
    gt_boxes, gt_labels, gt_valid = _pad_targets(targets, logits.device)
    if gt_labels.numel() and (gt_labels[gt_valid].min() < 0 or gt_labels[gt_valid].max() >= num_classes):
        raise ValueError(f"target labels must be class indices in 0..{num_classes - 1}")

    fg, target_boxes, target_scores = task_aligned_assign(
        logits.sigmoid(), boxes, points, gt_boxes, gt_labels, gt_valid
    )
    norm = target_scores.sum().clamp(min=1.0)
    cls = F.binary_cross_entropy_with_logits(logits, target_scores.to(logits.dtype), reduction="sum") / norm

    if fg.any():
        weight = target_scores.sum(-1)[fg]
        box = (complete_box_iou_loss(boxes[fg], target_boxes[fg], reduction="none") * weight).sum() / norm
        point, stride = points.expand_as(boxes[..., :2])[fg], strides.expand_as(boxes[..., :1])[fg]
        tb = target_boxes[fg]
        ltrb = torch.cat([point - tb[:, :2], tb[:, 2:] - point], dim=-1) / stride
        ltrb = ltrb.clamp(0, reg_max - 1 - 0.01)
        dfl = (_dfl_loss(dist[fg], ltrb) * weight).sum() / norm
    else:  # keep the graph connected so backward() works on background-only batches
        box = dfl = (boxes.sum() + dist.sum()) * 0.0

    total = LOSS_GAINS["box"] * box + LOSS_GAINS["cls"] * cls + LOSS_GAINS["dfl"] * dfl
    return {"loss": total, "box": box.detach(), "cls": cls.detach(), "dfl": dfl.detach()}
