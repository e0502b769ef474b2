"""torchvision detection architectures behind the project's detector contract (``base.py``).

Each wrapper keeps the torchvision model as ``self.model`` (so its ``state_dict`` keys are the
torchvision keys prefixed with ``model.``) and runs its parts directly: fixed-size
normalization, backbone, head, anchors precomputed for the fixed input size, and the box
coder. The torchvision ``GeneralizedRCNNTransform`` (resize, batching) and the final NMS are
not used: the input is already ``S x S`` and NMS runs outside the graph (Faster R-CNN keeps the
NMS inside its region proposal network). Losses are torchvision's own ``compute_loss``.

Use ``build_torchvision_detector`` for a fresh model, ``load_detector_weights`` to load a
checkpoint (re-sizing the class head when its class count differs), ``resize_head`` to re-size
in place.
"""

from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError

TORCHVISION_DETECTORS: tuple[str, ...] = (
    "ssdlite320_mobilenet_v3_large",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)

_NATIVE_SIZES = {"ssdlite320_mobilenet_v3_large": 320, "fasterrcnn_mobilenet_v3_large_320_fpn": 320}


def native_size(arch: str) -> int | None:
    """The input size an architecture is built for (the 320 models), or None: RetinaNet and FCOS
    (COCO-trained at 800-1333 px) run at any multiple of 32, so the data's size decides."""
    return _NATIVE_SIZES.get(arch)


class TorchvisionDetector(nn.Module):
    """Shared plumbing; subclasses say how to score, decode, and match one family."""

    background_offset = 0
    """1 where torchvision reserves class 0 for background (SSD): dataset label + 1 = model label."""
    kept_note = "backbone and box head loaded"
    """What ``load_detector_weights`` keeps when it re-sizes the class head."""

    def __init__(self, arch: str, num_classes: int, image_size: int, model: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.model = model
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)
        anchors, level_sizes = self._fixed_anchors()
        self.register_buffer("anchors", anchors, persistent=False)
        self.num_anchors = int(anchors.shape[0])
        """A Python int: reshapes by it keep N a constant in the exported graph."""
        self.level_sizes = level_sizes
        """Anchors per pyramid level (FCOS's loss and the RPN's top-n work level by level)."""

    # -- contract ---------------------------------------------------------------------------
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.train_outputs(images)
        return out["boxes"], out["scores"]

    def train_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """Dense boxes/scores plus the raw head outputs and the anchors that the loss needs."""
        head = self.model.head(self._features(images))
        n, c = self.num_anchors, self.num_classes
        boxes = self._decode(head["bbox_regression"]).clamp(0, self.image_size).reshape(-1, n, 4)
        scores = self._scores(head).reshape(-1, n, c)
        return {"boxes": boxes, "scores": scores, **head, "anchors": self.anchors}

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        targets = self._model_targets(targets)
        anchors = [outputs["anchors"]] * len(targets)
        losses = self._loss_dict(outputs, targets, anchors)
        return sum(losses.values())

    def prediction_layers(self) -> list[str]:
        """The final class/box (and centerness) prediction layers: pruning leaves them whole."""
        raise NotImplementedError

    def class_head_keys(self) -> list[str]:
        """State dict keys whose shapes depend on the class count."""
        return [f"{name}.{p}" for name in self._class_layers() for p in ("weight", "bias")]

    def load_checkpoint_state(self, state_dict: dict[str, Tensor]) -> str:
        """``load_detector_weights(self, state_dict)``: also takes raw torchvision keys."""
        return load_detector_weights(self, state_dict)

    # -- family hooks -----------------------------------------------------------------------
    def _scores(self, head: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _decode(self, rel_codes: Tensor) -> Tensor:
        """(B, N, 4) regression -> (B, N, 4) x1y1x2y2 boxes with the model's box coder."""
        anchors = self.anchors.unsqueeze(0).expand_as(rel_codes).reshape(-1, 4)
        boxes = self.model.box_coder.decode_single(rel_codes.reshape(-1, 4), anchors)
        return boxes.reshape(rel_codes.shape)

    def _loss_dict(
        self, head: dict[str, Tensor], targets: list[dict[str, Tensor]], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def _class_layers(self) -> list[str]:
        """Names (in this wrapper) of the layers whose output size depends on the class count."""
        raise NotImplementedError

    def _fresh_class_layer(self, name: str, old: nn.Module, columns: int) -> nn.Module:
        raise NotImplementedError

    def _set_columns(self, columns: int) -> None:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def _features(self, images: Tensor) -> list[Tensor]:
        feats = self.model.backbone(self._normalize(images))
        return list(feats.values()) if isinstance(feats, dict) else [feats]

    def _normalize(self, images: Tensor) -> Tensor:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and images.shape[-2:] != (self.image_size, self.image_size):
            raise InputError(
                f"{self.arch} was built for {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}; resize the input or build the model for that size"
            )
        return (images - self.mean) / self.std

    def _anchor_generator(self) -> nn.Module:
        return self.model.anchor_generator

    @torch.no_grad()
    def _fixed_anchors(self) -> tuple[Tensor, list[int]]:
        """Anchors of one S x S image and how many fall on each pyramid level."""
        from torchvision.models.detection.image_list import ImageList

        size = self.image_size
        was_training = self.model.training
        self.model.eval()  # keep BatchNorm running stats untouched by the probe
        probe = torch.zeros(1, 3, size, size)
        feats = self._features(probe)
        self.model.train(was_training)
        generator = self._anchor_generator()
        anchors = generator(ImageList(probe, [(size, size)]), feats)[0]
        per_cell = generator.num_anchors_per_location()
        return anchors, [f.shape[-2] * f.shape[-1] * a for f, a in zip(feats, per_cell, strict=True)]

    def _model_targets(self, targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Contract targets -> torchvision targets on this device; degenerate boxes are dropped
        (torchvision asserts on them and FCOS's centerness target would be NaN)."""
        device = self.anchors.device
        out = []
        for t in targets:
            boxes = t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
            labels = t["labels"].to(device=device, dtype=torch.int64).reshape(-1)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append({"boxes": boxes[keep], "labels": labels[keep] + self.background_offset})
        labels = torch.cat([t["labels"] for t in out]) - self.background_offset
        if labels.numel():
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                raise InputError(
                    f"target label {bad} is outside 0..{self.num_classes - 1} for this "
                    f"{self.num_classes}-class {self.arch}; check the dataset's class list"
                )
        return out

    def _columns(self, num_classes: int) -> int:
        return num_classes + self.background_offset


class SSDLiteDetector(TorchvisionDetector):
    """SSDlite: softmax over background + classes; the background column is dropped."""

    background_offset = 1

    def _scores(self, head: dict[str, Tensor]) -> Tensor:
        return F.softmax(head["cls_logits"], dim=-1)[..., 1:]

    def _loss_dict(self, head, targets, anchors):
        from torchvision.ops import box_iou

        matched = []
        for anchors_per_image, t in zip(anchors, targets, strict=True):
            if t["boxes"].numel() == 0:
                matched.append(
                    torch.full(
                        (anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device
                    )
                )
            else:
                matched.append(self.model.proposal_matcher(box_iou(t["boxes"], anchors_per_image)))
        return self.model.compute_loss(targets, head, anchors, matched)

    def _class_layers(self) -> list[str]:
        blocks = self.model.head.classification_head.module_list
        return [f"model.head.classification_head.module_list.{i}.1" for i in range(len(blocks))]

    def prediction_layers(self) -> list[str]:
        boxes = self.model.head.regression_head.module_list
        return [
            *self._class_layers(),
            *(f"model.head.regression_head.module_list.{i}.1" for i in range(len(boxes))),
        ]

    def _fresh_class_layer(self, name: str, old: nn.Module, columns: int) -> nn.Module:
        anchors = old.out_channels // self.model.head.classification_head.num_columns
        new = nn.Conv2d(old.in_channels, anchors * columns, old.kernel_size, padding=old.padding)
        nn.init.normal_(new.weight, mean=0.0, std=0.03)  # torchvision's ssdlite _normal_init
        nn.init.zeros_(new.bias)
        return new

    def _set_columns(self, columns: int) -> None:
        self.model.head.classification_head.num_columns = columns


class RetinaNetDetector(TorchvisionDetector):
    """RetinaNet: per-class sigmoid (focal loss), no background column."""

    def _scores(self, head: dict[str, Tensor]) -> Tensor:
        return torch.sigmoid(head["cls_logits"])

    def _loss_dict(self, head, targets, anchors):
        return self.model.compute_loss(targets, head, anchors)

    def _class_layers(self) -> list[str]:
        return ["model.head.classification_head.cls_logits"]

    def prediction_layers(self) -> list[str]:
        return [*self._class_layers(), "model.head.regression_head.bbox_reg"]

    def _fresh_class_layer(self, name: str, old: nn.Module, columns: int) -> nn.Module:
        anchors = self.model.head.classification_head.num_anchors
        new = nn.Conv2d(old.in_channels, anchors * columns, old.kernel_size, old.stride, old.padding)
        nn.init.normal_(new.weight, std=0.01)  # torchvision's init, prior probability 0.01
        nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
        return new

    def _set_columns(self, columns: int) -> None:
        self.model.head.classification_head.num_classes = columns


class FCOSDetector(RetinaNetDetector):
    """FCOS: anchor-free (one point per cell); score = sqrt(sigmoid(cls) * sigmoid(centerness)).
    The class head is laid out as RetinaNet's."""

    def _scores(self, head: dict[str, Tensor]) -> Tensor:
        return torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))

    def _decode(self, rel_codes: Tensor) -> Tensor:
        return self.model.box_coder.decode(rel_codes, self.anchors)  # broadcasts over the batch

    def _loss_dict(self, head, targets, anchors):
        return self.model.compute_loss(targets, head, anchors, self.level_sizes)

    def prediction_layers(self) -> list[str]:
        return [*super().prediction_layers(), "model.head.regression_head.bbox_ctrness"]


class FasterRCNNDetector(TorchvisionDetector):
    """Two-stage: the RPN keeps its best proposals (NMS per image and level inside the graph, as
    in torchvision); the box head then predicts a box per class per proposal.

    Dense output: the K best proposals per image (K = the RPN's test-time post-NMS top-n),
    zero-padded when fewer survive, listed in anchor order; every (proposal, class) pair is one
    row, so N = K * C and a row's score vector is zero except at its own class (padding rows
    score 0). NMS per class on these rows is torchvision's post-processing. The proposal stage
    is written with batched tensor ops (no per-image Python loop) so the export keeps a dynamic
    batch axis.
    """

    background_offset = 1
    kept_note = "backbone, RPN and box head loaded; per-class box regression re-initialized"

    def __init__(self, arch: str, num_classes: int, image_size: int, model: nn.Module) -> None:
        super().__init__(arch, num_classes, image_size, model)
        levels = [torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(self.level_sizes)]
        self.register_buffer("anchor_levels", torch.cat(levels), persistent=False)

    def _anchor_generator(self) -> nn.Module:
        return self.model.rpn.anchor_generator

    def _features(self, images: Tensor) -> list[Tensor]:
        return list(self._feature_dict(images).values())

    def _feature_dict(self, images: Tensor) -> dict[str, Tensor]:
        return self.model.backbone(self._normalize(images))

    @property
    def proposals_kept(self) -> int:
        """K: proposals per image in the dense output (the RPN's test-time post-NMS top-n)."""
        return self.model.rpn._post_nms_top_n["testing"]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self._feature_dict(images)
        _, _, proposals, anchor_idx = self._rpn(list(feats.values()))
        return self._dense(feats, proposals, anchor_idx)

    def train_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """Also returns the features, the RPN outputs and all kept proposals (the current
        mode's top-n, best first, zero-padded; ``proposal_valid`` marks real ones): the box-head
        loss samples proposals against the targets."""
        feats = self._feature_dict(images)
        objectness, deltas, proposals, anchor_idx = self._rpn(list(feats.values()))
        boxes, scores = self._dense(feats, proposals, anchor_idx)
        return {
            "boxes": boxes,
            "scores": scores,
            "objectness": objectness,
            "bbox_deltas": deltas,
            "anchors": self.anchors,
            "proposals": proposals,
            "proposal_valid": anchor_idx < self.num_anchors,
            **{f"feature.{name}": f for name, f in feats.items()},
        }

    def _rpn(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Objectness and deltas (flattened, for the loss), then the kept proposals (B, top-n, 4)
        best first and their anchor indices (padding rows: index = number of anchors)."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self.model.rpn
        objectness, deltas = concat_box_prediction_layers(*rpn.head(feats))
        rel_codes = deltas.detach().reshape(-1, self.num_anchors, 4)
        anchors = self.anchors.unsqueeze(0).expand_as(rel_codes).reshape(-1, 4)
        proposals = rpn.box_coder.decode_single(rel_codes.reshape(-1, 4), anchors).reshape(rel_codes.shape)
        return objectness, deltas, *self._filter_proposals(proposals, objectness)

    def _filter_proposals(self, proposals: Tensor, objectness: Tensor) -> tuple[Tensor, Tensor]:
        """torchvision's ``RegionProposalNetwork.filter_proposals`` (top-n per level, clip, drop
        tiny and low-scoring boxes, NMS per image and level, top-n per image) on the whole
        batch at once, returning fixed-size padded tensors instead of per-image lists."""
        from torchvision.ops import boxes as box_ops

        rpn, size, top_n = self.model.rpn, self.image_size, self.model.rpn.post_nms_top_n()
        num_anchors = self.num_anchors
        objectness = objectness.detach().reshape(-1, num_anchors)
        top = rpn._get_top_n_idx(objectness, self.level_sizes)  # (B, T) anchor indices
        image = torch.arange(top.shape[0], device=top.device)[:, None].expand_as(top)
        boxes = box_ops.clip_boxes_to_image(proposals[image, top], (size, size)).reshape(-1, 4)
        scores = torch.sigmoid(objectness[image, top]).reshape(-1)
        groups = (image * len(self.level_sizes) + self.anchor_levels[top]).reshape(-1)
        image, top = image.reshape(-1), top.reshape(-1)
        wide, high = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = torch.where((wide >= rpn.min_size) & (high >= rpn.min_size) & (scores >= rpn.score_thresh))[0]
        keep = ok[box_ops.batched_nms(boxes[ok], scores[ok], groups[ok], rpn.nms_thresh)]  # best first
        # rank of each kept proposal within its image; the first top_n of each image survive
        batch = torch.arange(proposals.shape[0], device=top.device)
        mine = (image[keep][:, None] == batch[None, :]).to(torch.int64)
        rank = (mine.cumsum(0) * mine).sum(1) - 1
        take = torch.where(rank < top_n)[0]
        keep = keep[take]
        slot = image[keep] * top_n + rank[take]
        out_boxes = boxes.new_zeros(proposals.shape[0] * top_n, 4).index_put((slot,), boxes[keep])
        out_idx = top.new_full((proposals.shape[0] * top_n,), num_anchors).index_put((slot,), top[keep])
        return out_boxes.reshape(-1, top_n, 4), out_idx.reshape(-1, top_n)

    def _dense(
        self, feats: dict[str, Tensor], proposals: Tensor, anchor_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Box head on the K best proposals per image, listed in anchor order: scores that
        nearly tie (onnxruntime vs torch, INT8 vs FP32) then cannot permute the rows."""
        heads, size, k, c = self.model.roi_heads, self.image_size, self.proposals_kept, self.num_classes
        order = anchor_idx[:, :k].argsort(dim=1)
        boxes = proposals[:, :k].gather(1, order[..., None].expand(-1, -1, 4))
        valid = anchor_idx[:, :k].gather(1, order) < self.num_anchors
        x = heads.box_head(self._roi_pool(feats, boxes))
        logits, regression = heads.box_predictor(x)
        decoded = heads.box_coder.decode_single(regression, boxes.reshape(-1, 4)).reshape(-1, c + 1, 4)
        probs = F.softmax(logits, dim=-1)[:, 1:] * valid.reshape(-1, 1)
        scores = probs[:, :, None] * torch.eye(c, device=probs.device, dtype=probs.dtype)
        return decoded[:, 1:].clamp(0, size).reshape(-1, k * c, 4), scores.reshape(-1, k * c, c)

    def _roi_pool(self, feats: dict[str, Tensor], boxes: Tensor) -> Tensor:
        """``MultiScaleRoIAlign`` on (B, K, 4) boxes; torchvision's takes a per-image list, which
        the exporter would unroll to a fixed batch."""
        from torchvision.ops import roi_align
        from torchvision.ops.poolers import _setup_scales

        pool = self.model.roi_heads.box_roi_pool
        levels = [f for name, f in feats.items() if name in pool.featmap_names]  # as torchvision filters
        if pool.scales is None or pool.map_levels is None:
            size = (self.image_size, self.image_size)
            pool.scales, pool.map_levels = _setup_scales(
                levels, [size], pool.canonical_scale, pool.canonical_level
            )
        flat = boxes.reshape(-1, 4)
        image = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)
        rois = torch.cat([image[:, None].expand(-1, boxes.shape[1]).reshape(-1, 1), flat], dim=1)
        which = pool.map_levels([flat])
        out = flat.new_zeros((flat.shape[0], levels[0].shape[1], *pool.output_size))
        for level, (feat, scale) in enumerate(zip(levels, pool.scales, strict=True)):
            idx = torch.where(which == level)[0]
            pooled = roi_align(feat, rois[idx], pool.output_size, scale, pool.sampling_ratio)
            out = out.index_put((idx,), pooled)
        return out

    def _loss_dict(self, out, targets, anchors):
        from torchvision.models.detection.roi_heads import fastrcnn_loss

        rpn, heads, size = self.model.rpn, self.model.roi_heads, self.image_size
        labels, matched_boxes = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched_boxes, anchors)
        loss_objectness, loss_rpn_box = rpn.compute_loss(
            out["objectness"], out["bbox_deltas"], labels, regression_targets
        )
        proposals = [p[v] for p, v in zip(out["proposals"], out["proposal_valid"], strict=True)]
        proposals, _, labels, regression_targets = heads.select_training_samples(proposals, targets)
        feats = {k.removeprefix("feature."): v for k, v in out.items() if k.startswith("feature.")}
        x = heads.box_head(heads.box_roi_pool(feats, proposals, [(size, size)] * len(proposals)))
        logits, regression = heads.box_predictor(x)
        loss_classifier, loss_box = fastrcnn_loss(logits, regression, labels, regression_targets)
        return {
            "loss_objectness": loss_objectness,
            "loss_rpn_box_reg": loss_rpn_box,
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box,
        }

    def _class_layers(self) -> list[str]:
        return ["model.roi_heads.box_predictor.cls_score", "model.roi_heads.box_predictor.bbox_pred"]

    def prediction_layers(self) -> list[str]:
        return ["model.rpn.head.cls_logits", "model.rpn.head.bbox_pred", *self._class_layers()]

    def _fresh_class_layer(self, name: str, old: nn.Module, columns: int) -> nn.Module:
        return nn.Linear(old.in_features, columns * (4 if name.endswith("bbox_pred") else 1))

    def _set_columns(self, columns: int) -> None:
        pass  # FastRCNNPredictor keeps no class count


_FAMILIES: dict[str, type[TorchvisionDetector]] = {
    "ssdlite320_mobilenet_v3_large": SSDLiteDetector,
    "retinanet_resnet50_fpn_v2": RetinaNetDetector,
    "fcos_resnet50_fpn": FCOSDetector,
    "fasterrcnn_mobilenet_v3_large_320_fpn": FasterRCNNDetector,
}


def build_torchvision_detector(arch: str, num_classes: int, image_size: int) -> TorchvisionDetector:
    """A randomly initialized torchvision detector for ``num_classes`` dataset classes at a fixed
    ``image_size`` (square, a multiple of 32)."""
    import torchvision

    if arch not in _FAMILIES:
        close = difflib.get_close_matches(arch, TORCHVISION_DETECTORS, n=3)
        hint = (
            f"did you mean {', '.join(close)}?" if close else f"use one of {', '.join(TORCHVISION_DETECTORS)}"
        )
        raise InputError(f"unknown detection architecture '{arch}'; {hint}")
    if num_classes < 1:
        raise InputError(f"{arch} needs at least 1 class, got {num_classes}; check the dataset's classes")
    if image_size < 64 or image_size % 32:
        raise InputError(f"image size {image_size} for {arch} must be a multiple of 32 and at least 64")
    family = _FAMILIES[arch]
    model = torchvision.models.get_model(
        arch, weights=None, weights_backbone=None, num_classes=num_classes + family.background_offset
    )
    return family(arch, num_classes, image_size, model)


def resize_head(module: TorchvisionDetector, num_classes: int) -> TorchvisionDetector:
    """Replace the class-count-dependent layers with freshly initialized ones for ``num_classes``
    (in place); backbone, neck, class tower and box head keep their weights."""
    if num_classes < 1:
        raise InputError(f"{module.arch} needs at least 1 class, got {num_classes}")
    columns = module._columns(num_classes)
    for name in module._class_layers():
        old = module.get_submodule(name)
        new = module._fresh_class_layer(name, old, columns).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent), attr, new)
    module._set_columns(columns)
    module.num_classes = num_classes
    return module


def load_detector_weights(module: TorchvisionDetector, state_dict: dict[str, Tensor]) -> str:
    """Load a wrapper state dict or a raw torchvision one (keys without ``model.``).

    When the checkpoint was trained for another class count, everything but the class layers
    is loaded and those are re-initialized; the returned note says so ("" when nothing was
    re-sized). Shape or key mismatches elsewhere raise a one-line InputError.
    """
    what = f"detector weights for {module.arch}"
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = module.state_dict()
    if not any(k in own for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    first = module.class_head_keys()[0]  # the first class layer's weight
    if first not in state:
        raise InputError(
            f"{what} do not match: no '{first.removeprefix('model.')}' (keys look like {list(state)[:2]}); "
            "check the architecture / arch_key"
        )
    anchors = own[first].shape[0] // module._columns(module.num_classes)
    ckpt_columns, rest = divmod(int(state[first].shape[0]), anchors)
    if rest:
        raise InputError(
            f"{what} do not match: '{first}' has {state[first].shape[0]} outputs, "
            f"not a multiple of {anchors} anchors; check the architecture / arch_key"
        )
    ckpt_classes = ckpt_columns - module.background_offset
    if ckpt_classes == module.num_classes:
        _load(module, state, set(), what)
        return ""
    skip = set(module.class_head_keys())
    _load(module, {k: v for k, v in state.items() if k not in skip}, skip, what)
    resize_head(module, module.num_classes)
    return f"classification head re-sized {ckpt_classes} -> {module.num_classes} classes; {module.kept_note}"


def _load(module: nn.Module, state: dict[str, Tensor], may_miss: set[str], what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        line = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise InputError(f"{what} do not match: {line[:200]}; check the architecture / arch_key") from None
    missing = [k for k in missing if k not in may_miss]
    if missing or unexpected:
        problem = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise InputError(f"{what} do not match: {problem}; check the architecture / arch_key")
