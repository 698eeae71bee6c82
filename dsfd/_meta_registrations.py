"""Fake (meta) kernels and autograd for the ``dsfd`` ops.

The fake kernels let ``torch.compile(fullgraph=True)`` trace the ops: they
repeat the C++ shape checks with ``torch._check`` and return empty tensors of
the right shape. Registered only when the extension loaded (an unguarded
registration would turn a failed build into a confusing import error).
"""

from __future__ import annotations

import torch

from .constants import IOU_THRESHOLD, MAX_KEEP, PRE_NMS_TOP_K, SCORE_THRESHOLD, VOTE_IOU_THRESHOLD
from .extension import _has_ops


def _check_boxes(t, rank, name, op):
    torch._check(t.dim() == rank and t.shape[-1] == 4, lambda: f"{op}: {name} must have rank {rank} and 4 columns, got {tuple(t.shape)}")
    torch._check(t.is_floating_point(), lambda: f"{op}: {name} must be floating point, got {t.dtype}")


if _has_ops():

    @torch.library.register_fake("dsfd::box_iou")
    def _box_iou_fake(boxes1, boxes2):
        torch._check(boxes1.dim() == boxes2.dim() and boxes1.dim() in (2, 3), lambda: "dsfd::box_iou: rank mismatch")
        torch._check(boxes1.shape[-1] == 4 and boxes2.shape[-1] == 4, lambda: "dsfd::box_iou: boxes need 4 columns")
        torch._check(boxes1.dtype == boxes2.dtype, lambda: "dsfd::box_iou: dtype mismatch")
        if boxes1.dim() == 3:
            torch._check(boxes1.shape[0] == boxes2.shape[0], lambda: "dsfd::box_iou: batch sizes differ")
            return boxes1.new_empty((boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]))
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))

    @torch.library.register_fake("dsfd::encode_boxes")
    def _encode_fake(gt, anchors, variance_xy=0.1, variance_wh=0.2):
        torch._check(gt.shape[-1] == 4, lambda: "dsfd::encode_boxes: gt needs 4 columns")
        return torch.empty_like(gt)

    @torch.library.register_fake("dsfd::decode_boxes")
    def _decode_fake(deltas, anchors, variance_xy=0.1, variance_wh=0.2):
        _check_boxes(anchors, 2, "anchors", "dsfd::decode_boxes")
        torch._check(deltas.shape[-2] == anchors.shape[0], lambda: "dsfd::decode_boxes: deltas and anchors disagree on A")
        return torch.empty_like(deltas)

    @torch.library.register_fake("dsfd::nms")
    def _nms_fake(boxes, scores, iou_threshold):
        _check_boxes(boxes, 2, "boxes", "dsfd::nms")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "dsfd::nms: scores must be [N]")
        ctx = torch.library.get_ctx()
        num_kept = ctx.new_dynamic_size()
        return boxes.new_empty(num_kept, dtype=torch.int64)

    @torch.library.register_fake("dsfd::batched_nms")
    def _batched_nms_fake(boxes, scores, iou_threshold=IOU_THRESHOLD, score_threshold=SCORE_THRESHOLD,
                          pre_nms_top_k=PRE_NMS_TOP_K, max_keep=MAX_KEEP):
        _check_boxes(boxes, 3, "boxes", "dsfd::batched_nms")
        torch._check(scores.dim() == 2, lambda: "dsfd::batched_nms: scores must be [B, N]")
        B = boxes.shape[0]
        return (
            boxes.new_empty((B, max_keep, 4)),
            scores.new_empty((B, max_keep)),
            boxes.new_empty((B, max_keep), dtype=torch.int64),
            boxes.new_empty((B,), dtype=torch.int64),
        )

    @torch.library.register_fake("dsfd::box_voting")
    def _box_voting_fake(boxes, scores, iou_threshold=VOTE_IOU_THRESHOLD, max_keep=MAX_KEEP):
        _check_boxes(boxes, 2, "boxes", "dsfd::box_voting")
        torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "dsfd::box_voting: scores must be [N]")
        num_groups = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((num_groups, 4)), scores.new_empty((num_groups,))

    @torch.library.register_fake("dsfd::match_anchors")
    def _match_fake(anchors, gt_boxes, gt_counts, iou_threshold=0.4, ignore_threshold=None, variance_xy=0.1, variance_wh=0.2):
        _check_boxes(anchors, 2, "anchors", "dsfd::match_anchors")
        _check_boxes(gt_boxes, 3, "gt_boxes", "dsfd::match_anchors")
        B, A = gt_boxes.shape[0], anchors.shape[0]
        return (
            gt_boxes.new_empty((B, A), dtype=torch.int64),
            gt_boxes.new_empty((B, A), dtype=torch.int64),
            gt_boxes.new_empty((B, A, 4)),
        )

    @torch.library.register_fake("dsfd::hard_negative_mask")
    def _hnm_fake(conf_loss, labels, neg_pos_ratio=3, min_negatives=0):
        torch._check(conf_loss.dim() == 2 and labels.shape == conf_loss.shape, lambda: "dsfd::hard_negative_mask: shapes")
        return conf_loss.new_empty(conf_loss.shape, dtype=torch.bool)

    @torch.library.register_fake("dsfd::ignore_anchors")
    def _ignore_fake(anchors, labels, ignore_boxes, ignore_counts, iou_threshold=0.1):
        _check_boxes(anchors, 2, "anchors", "dsfd::ignore_anchors")
        _check_boxes(ignore_boxes, 3, "ignore_boxes", "dsfd::ignore_anchors")
        torch._check(labels.dim() == 2 and labels.shape[0] == ignore_boxes.shape[0] and labels.shape[1] == anchors.shape[0],
                     lambda: "dsfd::ignore_anchors: labels must be [B, A]")
        return labels.new_empty(labels.shape, dtype=torch.int64)

    @torch.library.register_fake("dsfd::upsample_mul")
    def _upsample_mul_fake(upper, lateral, align_corners=False, relu=False):
        torch._check(upper.dim() == 4 and lateral.dim() == 4, lambda: "dsfd::upsample_mul: inputs must be 4-D")
        torch._check(upper.shape[:2] == lateral.shape[:2], lambda: "dsfd::upsample_mul: batch/channels differ")
        # The kernels return the lateral map's (suggested) memory format.
        channels_last = lateral.is_contiguous(memory_format=torch.channels_last) and not lateral.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty_like(lateral, memory_format=fmt)

    @torch.library.register_fake("dsfd::normalize_images")
    def _normalize_images_fake(images, mean, dtype):
        torch._check(images.dim() == 4 and images.dtype == torch.uint8, lambda: "dsfd::normalize_images: images must be uint8 [B, H, W, C]")
        torch._check(images.shape[3] == len(mean), lambda: "dsfd::normalize_images: mean must have C values")
        B, H, W, C = images.shape
        return torch.empty((B, C, H, W), dtype=dtype, device=images.device, memory_format=torch.channels_last)

    @torch.library.register_fake("dsfd::decode_detections")
    def _decode_detections_fake(loc, conf, anchors, variance_xy, variance_wh, max_exponent, width, height):
        _check_boxes(loc, 3, "loc", "dsfd::decode_detections")
        _check_boxes(anchors, 2, "anchors", "dsfd::decode_detections")
        torch._check(conf.dim() == 3 and conf.shape[-1] == 2, lambda: "dsfd::decode_detections: conf must be [B, A, 2]")
        torch._check(loc.shape[:2] == conf.shape[:2] and loc.shape[1] == anchors.shape[0],
                     lambda: "dsfd::decode_detections: loc, conf and anchors must agree on B and A")
        B, A = loc.shape[:2]
        return loc.new_empty((B, A, 4), dtype=torch.float32), loc.new_empty((B, A), dtype=torch.float32)

    @torch.library.register_fake("dsfd::upsample_mul_backward")
    def _upsample_mul_backward_fake(grad_out, upper, lateral, out, align_corners, relu):
        return torch.empty_like(upper), torch.empty_like(lateral)

    # Autograd for upsample_mul: the backward is an op of its own, so it runs
    # on the same backend kernels (and traces under torch.compile).
    def _upsample_mul_setup_context(ctx, inputs, output):
        upper, lateral, align_corners, relu = inputs
        ctx.save_for_backward(upper, lateral, output)
        ctx.align_corners = align_corners
        ctx.relu = relu

    def _upsample_mul_backward(ctx, grad):
        upper, lateral, output = ctx.saved_tensors
        grad_upper, grad_lateral = torch.ops.dsfd.upsample_mul_backward(
            grad, upper, lateral, output, ctx.align_corners, ctx.relu
        )
        return grad_upper, grad_lateral, None, None

    torch.library.register_autograd(
        "dsfd::upsample_mul", _upsample_mul_backward, setup_context=_upsample_mul_setup_context
    )
