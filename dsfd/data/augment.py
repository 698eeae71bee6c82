"""DSFD training augmentation (IAM's data side, spec section 5) and the eval transform.

:class:`TrainTransform` applies, in order:

1. **Photometric distortion** (:func:`photometric_distort`, as in SSD): with
   p=.5 brightness ``+U(-32, 32)``; then with p=.5 "contrast, then HSV" or
   else "HSV, then contrast", where contrast is a gain ``*U(0.5, 1.5)`` (p=.5)
   and the HSV step holds saturation ``*U(0.5, 1.5)`` (p=.5) and hue
   ``+U(-18, 18)`` degrees (p=.5); finally with p=.5 a random channel swap
   (one of the five non-identity permutations). Values are clipped to
   ``[0, 255]`` after every step, so the output stays a valid image.
2. **A square crop**: with probability ``das_prob`` (2/5)
   *data-anchor-sampling*, otherwise an *SSD-style* crop.

   * Data-anchor-sampling (PyramidBox): pick a random face, ``s = sqrt(w h)``;
     the target anchor index is uniform in ``0 .. i_max`` where ``i_max`` is
     the index of the smallest anchor ``>= s`` (at least 1, i.e. faces up to
     32 px may go to 16 or 32; capped at the largest anchor ``<= size``);
     the face is scaled to ``A * 2**U(-j, j)`` (``j = das_scale_jitter``,
     1 as in the public PyramidBox/DSFD re-implementations) by cropping a
     square of side ``L = size * s / (A * 2**u)``. The crop is placed
     uniformly among positions that contain the face and stay inside the
     image along each axis where ``L`` allows it (a crop larger than the
     image contains the whole image, the rest being mean-filled: a zoom-out);
     a face larger than the crop is cut by it.
   * SSD-style: side ``= short side`` (one time in five) or
     ``U(lo, hi) * short side`` (``crop_scale``, ``(0.3, 1)`` as in SSD),
     position uniform inside the image; a side beyond an image's extent
     (``hi > 1``: a zoom-out, large faces seen whole) places the image
     uniformly inside the crop along that axis, the rest mean-filled.

   A candidate crop is accepted when at least one face survives: faces whose
   centre lies strictly inside the crop are kept, clipped to it, and dropped
   when their area in the output is ``<= min_face**2`` (8x8). The 50
   candidates of a round are drawn and tested at once (vectorised); after 50
   failures the threshold is halved (``min_face / 2`` side, i.e. 4x4) for 50
   more. If those fail too the whole image, centred in a mean-filled square,
   is used with the halved threshold. Images without faces take the first
   candidate.
   Ignore regions (when the caller passes ``ignore``): the given regions
   (invalid-flagged or crowd boxes) and every face the crop dropped (too
   small, or centre outside the crop but partly inside) are clipped to the
   crop and returned beside the boxes, so that the loss neither learns them
   as faces nor as background (:func:`dsfd.ops.ignore_anchors`).
3. **Horizontal flip** with p=.5.
4. **Resize** to ``size x size`` (640 by default; cv2 ``INTER_AREA`` when
   shrinking, ``INTER_LINEAR`` when enlarging), **subtract the BGR mean**
   ``(104, 117, 123)`` (mean-filled padding becomes exactly 0), and output
   ``float32 [3, size, size]`` with boxes ``float32 [K, 4]`` normalised to
   ``[0, 1]``.

Photometric operations are per-pixel, so they are applied only to the part of
the image that the crop uses (the result is the same as distorting the
whole image first). All randomness comes from the ``numpy.random.Generator``
passed in; every call consumes the same numbers in the same order for a given
branch, so the output is a function of the generator's seed (see
:func:`dsfd.data.wider.sample_rng`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from ..constants import BGR_MEAN

__all__ = [
    "BGR_MEAN",
    "DAS_ANCHOR_SIZES",
    "photometric_distort",
    "CropInfo",
    "TrainTransform",
    "EvalTransform",
]

#: Target anchor sizes (pixels at the network input) of data-anchor-sampling.
DAS_ANCHOR_SIZES: Tuple[int, ...] = (16, 32, 64, 128, 256, 512)

# Non-identity channel permutations for the random channel swap.
_PERMS = np.array([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD photometric distortion of a BGR image; returns ``float32`` in ``[0, 255]``.

    Draws 12 numbers from ``rng`` whatever the outcome (fixed consumption).
    """
    u = rng.random(12)
    img = image.astype(np.float32)  # copy
    if u[0] < 0.5:  # brightness
        img += np.float32(u[1] * 64.0 - 32.0)
        np.clip(img, 0.0, 255.0, out=img)
    contrast_first = u[2] < 0.5
    do_contrast, alpha = u[3] < 0.5, np.float32(0.5 + u[4])
    do_sat, sat = u[5] < 0.5, np.float32(0.5 + u[6])
    do_hue, hue = u[7] < 0.5, np.float32(u[8] * 36.0 - 18.0)
    do_swap, perm = u[9] < 0.5, _PERMS[min(int(u[10] * 5), 4)]

    def contrast(x: np.ndarray) -> np.ndarray:
        if do_contrast:
            x *= alpha
            np.clip(x, 0.0, 255.0, out=x)
        return x

    if contrast_first:
        img = contrast(img)
    if do_sat or do_hue:
        # float32 HSV: H in [0, 360), S in [0, 1], V in the input's range.
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if do_sat:
            s = hsv[..., 1]
            s *= sat
            np.clip(s, 0.0, 1.0, out=s)
        if do_hue:
            h = hsv[..., 0]
            h += hue
            np.mod(h, 360.0, out=h)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        np.clip(img, 0.0, 255.0, out=img)
    if not contrast_first:
        img = contrast(img)
    if do_swap:
        img = np.ascontiguousarray(img[..., perm])
    return img


@dataclass
class CropInfo:
    """What :class:`TrainTransform` did (for tests and debugging).

    Attributes:
        branch: ``"das"``, ``"ssd"``, ``"fallback"`` (no candidate passed) or
            ``"none"`` (eval).
        crop: ``x0, y0, side_x, side_y`` of the crop in original pixels.
        min_face: side threshold (output pixels) that was applied.
        face_index: DAS: index (into the input boxes) of the sampled face.
        anchor: DAS: the target anchor size.
        flipped: whether the output was mirrored.
        kept: indices (into the input boxes) of the output boxes, in order.
    """

    branch: str = "none"
    crop: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    min_face: float = 0.0
    face_index: int = -1
    anchor: int = 0
    flipped: bool = False
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _surviving(
    boxes: np.ndarray, x0: np.ndarray, y0: np.ndarray, side: np.ndarray, size: int, min_face: float
) -> np.ndarray:
    """``bool [n, K]``: box k survives crop n (centre strictly inside, output area > min_face**2)."""
    x0, y0, side = x0[:, None], y0[:, None], side[:, None]
    cx = (boxes[None, :, 0] + boxes[None, :, 2]) * 0.5
    cy = (boxes[None, :, 1] + boxes[None, :, 3]) * 0.5
    inside = (cx > x0) & (cx < x0 + side) & (cy > y0) & (cy < y0 + side)
    w = np.minimum(boxes[None, :, 2], x0 + side) - np.maximum(boxes[None, :, 0], x0)
    h = np.minimum(boxes[None, :, 3], y0 + side) - np.maximum(boxes[None, :, 1], y0)
    scale = size / side
    area = np.clip(w, 0, None) * np.clip(h, 0, None) * scale * scale
    return inside & (area > min_face * min_face)


def _clip_to_crop(boxes: np.ndarray, x0: float, y0: float, sx: float, sy: float) -> np.ndarray:
    """Pixel corner boxes clipped to the crop ``[x0, x0+sx) x [y0, y0+sy)``, in crop units ``[0, 1]``."""
    out = np.stack(
        [
            (np.maximum(boxes[:, 0], x0) - x0) / sx,
            (np.maximum(boxes[:, 1], y0) - y0) / sy,
            (np.minimum(boxes[:, 2], x0 + sx) - x0) / sx,
            (np.minimum(boxes[:, 3], y0 + sy) - y0) / sy,
        ],
        1,
    )
    return np.clip(out, 0.0, 1.0)


class TrainTransform:
    """The DSFD training augmentation (see the module docstring).

    Args:
        size: output side in pixels (640; e.g. 320 for a tiny configuration).
        mean: BGR mean subtracted from the output.
        das_prob: probability of data-anchor-sampling (2/5).
        anchor_sizes: DAS target anchor sizes (those ``> size`` are not used).
        das_scale_jitter: DAS scale jitter ``2**U(-j, j)`` (1.0; 0 = exact).
        min_face: output-pixel side below which (area ``<= min_face**2``) a
            face is dropped; halved after ``max_tries`` failed candidates.
        max_tries: candidates per round (50).
        photometric: apply the photometric distortion.
        flip_prob: probability of the horizontal flip.
        crop_scale: ``(lo, hi)`` range of the SSD-style crop side as a
            fraction of the image's short side (``(0.3, 1.0)``; ``hi > 1``
            adds zoom-out crops).

    ``transform(image, boxes, rng, return_info=False)`` takes a BGR image
    (``uint8 [H, W, 3]``), corner pixel boxes ``[K, 4]`` inside the image and
    a ``numpy.random.Generator``; returns ``(float32 Tensor[3, size, size],
    float32 Tensor[K', 4] normalised)`` and, with ``return_info``, a
    :class:`CropInfo`.
    """

    #: :class:`dsfd.data.FaceDataset` passes ignore regions (``ignore=``) instead of painting them.
    accepts_ignore = True

    def __init__(
        self,
        size: int = 640,
        mean: Sequence[float] = BGR_MEAN,
        das_prob: float = 0.4,
        anchor_sizes: Sequence[int] = DAS_ANCHOR_SIZES,
        das_scale_jitter: float = 1.0,
        min_face: float = 8.0,
        max_tries: int = 50,
        photometric: bool = True,
        flip_prob: float = 0.5,
        crop_scale: Tuple[float, float] = (0.3, 1.0),
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.das_prob = float(das_prob)
        anchors = np.asarray(sorted(anchor_sizes), dtype=np.float64)
        usable = anchors[anchors <= self.size]
        self.anchor_sizes = usable if usable.size else anchors[:1]
        self.das_scale_jitter = float(das_scale_jitter)
        self.min_face = float(min_face)
        self.max_tries = int(max_tries)
        self.photometric = bool(photometric)
        self.flip_prob = float(flip_prob)
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi:
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi, got {crop_scale}")
        self.crop_scale = (lo, hi)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(size={self.size}, das_prob={self.das_prob}, "
            f"anchor_sizes={self.anchor_sizes.astype(int).tolist()}, das_scale_jitter={self.das_scale_jitter}, "
            f"min_face={self.min_face}, max_tries={self.max_tries}, photometric={self.photometric}, "
            f"flip_prob={self.flip_prob}, crop_scale={self.crop_scale})"
        )

    # -- candidate crops: arrays x0, y0, side (original pixels) ---------------
    def _ssd_candidates(self, h: int, w: int, rng: np.random.Generator, n: int):
        u = rng.random((n, 4))
        short = float(min(h, w))
        lo, hi = self.crop_scale
        frac = np.where(u[:, 0] < 0.2, 1.0, lo + (hi - lo) * u[:, 1])
        side = np.maximum(np.floor(frac * short), 1.0)
        # inside the image where the side allows it, else the image inside the crop
        x_lo, x_hi = np.minimum(0.0, w - side), np.maximum(0.0, w - side)
        y_lo, y_hi = np.minimum(0.0, h - side), np.maximum(0.0, h - side)
        x0 = np.floor(x_lo + u[:, 2] * (x_hi - x_lo + 1))
        y0 = np.floor(y_lo + u[:, 3] * (y_hi - y_lo + 1))
        return x0, y0, side

    def _das_candidates(self, boxes: np.ndarray, h: int, w: int, rng: np.random.Generator, n: int):
        k = len(boxes)
        u = rng.random((n, 5))
        face = np.minimum((u[:, 0] * k).astype(np.int64), k - 1)
        fb = boxes[face]
        s = np.sqrt((fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1]))
        na = len(self.anchor_sizes)
        i_max = np.clip(np.searchsorted(self.anchor_sizes, s, side="left"), 1, na - 1) if na > 1 else np.zeros(n, int)
        a_idx = np.minimum((u[:, 1] * (i_max + 1)).astype(np.int64), i_max)
        anchor = self.anchor_sizes[a_idx]
        scale = anchor / s * np.exp2(self.das_scale_jitter * (2.0 * u[:, 2] - 1.0))  # output px per input px
        side = np.maximum(np.round(self.size / scale), 1.0)
        x0 = self._place(fb[:, 0], fb[:, 2], side, w, u[:, 3])
        y0 = self._place(fb[:, 1], fb[:, 3], side, h, u[:, 4])
        return x0, y0, side, face, anchor.astype(np.int64)

    @staticmethod
    def _place(f1: np.ndarray, f2: np.ndarray, side: np.ndarray, extent: int, u: np.ndarray) -> np.ndarray:
        """Crop start along one axis: contains ``[f1, f2]``, inside ``[0, extent]`` where possible."""
        lo = np.maximum(f2 - side, np.minimum(0.0, extent - side))
        hi = np.minimum(f1, np.maximum(0.0, extent - side))
        # Face larger than the crop: the crop lies inside the face.
        small = lo > hi
        lo = np.where(small, f1, lo)
        hi = np.where(small, f2 - side, hi)
        return np.floor(lo + u * (hi - lo))

    # -- pixels ----------------------------------------------------------------
    def _render(
        self, image: np.ndarray, x0: float, y0: float, sx: float, sy: float, rng_photo: Optional[np.random.Generator]
    ) -> np.ndarray:
        """Crop ``[x0, x0+sx) x [y0, y0+sy)`` (integers; may exceed the image), distort, resize, pad with the mean."""
        h, w = image.shape[:2]
        size = self.size
        out = np.empty((size, size, 3), dtype=np.float32)
        out[...] = self.mean
        ix0, iy0 = int(max(0, x0)), int(max(0, y0))
        ix1, iy1 = int(min(w, x0 + sx)), int(min(h, y0 + sy))
        fx, fy = size / sx, size / sy
        ox0, ox1 = int(round((ix0 - x0) * fx)), int(round((ix1 - x0) * fx))
        oy0, oy1 = int(round((iy0 - y0) * fy)), int(round((iy1 - y0) * fy))
        ox0, oy0 = max(0, min(size, ox0)), max(0, min(size, oy0))
        ox1, oy1 = max(ox0, min(size, ox1)), max(oy0, min(size, oy1))
        region = image[iy0:iy1, ix0:ix1]
        if rng_photo is not None:
            region = photometric_distort(region, rng_photo)
        else:
            region = region.astype(np.float32)
        if ox1 > ox0 and oy1 > oy0 and region.size:
            tw, th = ox1 - ox0, oy1 - oy0
            if (tw, th) != (region.shape[1], region.shape[0]):
                interp = cv2.INTER_AREA if tw * th < region.shape[0] * region.shape[1] else cv2.INTER_LINEAR
                region = cv2.resize(region, (tw, th), interpolation=interp)
            out[oy0:oy1, ox0:ox1] = region
        return out

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        rng: Optional[np.random.Generator] = None,
        return_info: bool = False,
        ignore: Optional[np.ndarray] = None,
    ) -> Union[Tuple[Tensor, ...], Tuple[Any, ...]]:
        """See the class docstring; with ``ignore`` (pixel corner boxes ``[M, 4]``, possibly
        empty) the result gains the ignore regions of the output (``float32 [M', 4]``
        normalised) after the boxes: ``(image, boxes, ignore[, info])``."""
        if rng is None:
            rng = np.random.default_rng()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a BGR image [H, W, 3], got shape {image.shape}")
        h, w = image.shape[:2]
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        k = len(b)
        # 1. photometric: its own child stream, drawn first, applied to the crop's pixels.
        rng_photo = np.random.default_rng(rng.integers(0, 2**63)) if self.photometric else None
        # 2. crop
        use_das = rng.random() < self.das_prob
        info = CropInfo()
        chosen = None
        n = self.max_tries
        for t in (self.min_face, self.min_face / 2):
            if k and use_das:
                x0, y0, side, face, anchor = self._das_candidates(b, h, w, rng, n)
            else:
                x0, y0, side = self._ssd_candidates(h, w, rng, n)
            if k == 0:
                j = 0
            else:
                ok = _surviving(b, x0, y0, side, self.size, t)
                valid = ok.any(1)
                if not valid.any():
                    continue
                j = int(np.argmax(valid))
            chosen = (x0[j], y0[j], side[j], side[j], t)
            info.branch = "das" if (k and use_das) else "ssd"
            if info.branch == "das":
                info.face_index, info.anchor = int(face[j]), int(anchor[j])
            break
        if chosen is None:  # whole image, centred in a square
            side = float(max(h, w))
            chosen = (math.floor((w - side) / 2), math.floor((h - side) / 2), side, side, self.min_face / 2)
            info.branch = "fallback"
        cx0, cy0, sx, sy, t = chosen
        info.crop, info.min_face = (float(cx0), float(cy0), float(sx), float(sy)), float(t)
        # boxes: centre inside, clip, area filter (square crops: sx == sy)
        if k:
            keep = _surviving(b, np.array([cx0]), np.array([cy0]), np.array([sx]), self.size, t)[0]
            idx = np.nonzero(keep)[0]
            kb = _clip_to_crop(b[idx], cx0, cy0, sx, sy)
        else:
            idx = np.zeros(0, dtype=np.int64)
            kb = np.zeros((0, 4))
        ign_out = None
        if ignore is not None:
            ign_out = self._ignore_regions(b, idx, ignore, cx0, cy0, sx)
        # 3. flip
        flip = rng.random() < self.flip_prob
        # 4. pixels
        out = self._render(image, cx0, cy0, sx, sy, rng_photo)
        if flip:
            out = out[:, ::-1]
            kb = np.stack([1.0 - kb[:, 2], kb[:, 1], 1.0 - kb[:, 0], kb[:, 3]], 1)
            if ign_out is not None:
                ign_out = np.stack([1.0 - ign_out[:, 2], ign_out[:, 1], 1.0 - ign_out[:, 0], ign_out[:, 3]], 1)
        out = out - self.mean
        img_t = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        boxes_t = torch.from_numpy(kb.astype(np.float32).reshape(-1, 4))
        result: Tuple[Any, ...] = (img_t, boxes_t)
        if ign_out is not None:
            result += (torch.from_numpy(ign_out.astype(np.float32).reshape(-1, 4)),)
        if return_info:
            info.flipped, info.kept = bool(flip), idx
            result += (info,)
        return result

    @staticmethod
    def _ignore_regions(
        boxes: np.ndarray, kept: np.ndarray, ignore: np.ndarray, x0: float, y0: float, side: float
    ) -> np.ndarray:
        """Normalised ignore regions of a crop: the given regions and every face the crop dropped
        (too small, or centre outside but partly inside), clipped; empty ones removed."""
        dropped = np.ones(len(boxes), dtype=bool)
        dropped[kept] = False
        regions = np.concatenate([np.asarray(ignore, np.float64).reshape(-1, 4), boxes[dropped]], 0)
        r = _clip_to_crop(regions, x0, y0, side, side)
        return r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]


class EvalTransform:
    """No augmentation: optional resize, mean subtraction, CHW float32, normalised boxes.

    Args:
        size: ``None`` keeps the image size; an int resizes to ``size x size``;
            ``(height, width)`` resizes to that.
        mean: BGR mean subtracted.

    ``transform(image, boxes, rng=None)`` -> ``(float32 Tensor[3, H', W'],
    float32 Tensor[K, 4])`` with boxes normalised by the image size (resizing
    does not change normalised boxes).
    """

    def __init__(self, size: Optional[object] = 640, mean: Sequence[float] = BGR_MEAN) -> None:
        if size is None:
            self.size = None
        elif isinstance(size, int):
            self.size = (size, size)
        else:
            self.size = (int(size[0]), int(size[1]))
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, rng: Optional[np.random.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        h, w = image.shape[:2]
        img = image
        if self.size is not None and (h, w) != self.size:
            th, tw = self.size
            interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
            img = cv2.resize(img, (tw, th), interpolation=interp)
        out = img.astype(np.float32) - self.mean
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.array([w, h, w, h], dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), torch.from_numpy(np.clip(b, 0, 1))
