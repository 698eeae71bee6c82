"""``dsfd train``: train the paper's DSFD on WIDER FACE, or on your own faces in COCO or YOLO format.

Examples::

    # fine-tune the packaged default model on your faces (COCO JSON or a YOLO folder);
    # the architecture comes from the weights; see docs/own_data.md for the schedule
    dsfd train --data my_faces.json --weights default --iters 2000 --lr 5e-4 --warmup-iters 50 --out runs/ft
    dsfd train --data my_yolo/ --data ../shared/data/widerface --weights default --freeze-backbone ...

    # paper schedule (SGD 0.9, wd 5e-4, batch 16, lr 1e-3, x0.1 at 4/6 and 5/6 of --iters)
    dsfd train --backbone resnet50 --backbone-weights resnet50_imagenet.pth --out runs/r50

    # several GPUs / nodes: --batch-size is the global batch, split over the ranks
    torchrun --nproc_per_node=8 -m dsfd train --backbone resnet152 --out runs/r152

    # mix several WIDER-layout roots; bf16 autocast on a CPU with bf16 in hardware
    dsfd train --backbone lite --fem-norm --data ../shared/data/widerface \
        --data ../shared/data/widerface_extra --dtype bfloat16 --device cpu --out runs/lite

    # CPU smoke run with the tiny network
    dsfd train --backbone tiny --size 160 --batch-size 4 --iters 50 --workers 0 --out /tmp/tiny

    # continue after an interruption (Ctrl-C / SIGTERM write <out>/last.pt first)
    dsfd train ... --out runs/r50 --resume          # = --resume auto

Outputs (``--out``): ``last.pt`` (full training state, also loadable by
``dsfd.models.load_weights``), ``final.pt`` (weights + config at the end),
optional ``iter_XXXXXXX.pt`` snapshots, and ``log.jsonl`` (one JSON record
per line: ``start``, ``train``, ``val``, ``checkpoint``, ``stop``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List

from ..cli_options import (AMP_OF_DTYPE, add_data, add_device, add_dtype, add_progress, add_weights,
                           deprecated_alias, nonempty_path, nonempty_text)
from ..constants import BACKBONES
from .config import TrainConfig

#: The old ``--amp`` values, for its deprecation alias.
DTYPE_OF_AMP = {amp: dtype for dtype, amp in AMP_OF_DTYPE.items()}

__all__ = ["add_parser", "run", "config_from_args"]


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train the paper's dual-shot DSFD (PAL loss, paper schedule, AMP, DDP via torchrun)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    add_data(g, repeatable=True,
             data_help="a WIDER FACE folder, a COCO .json file or a YOLO folder (images/ + labels/); repeat to mix "
                       "several roots of any formats (default $DSFD_WIDER_ROOT or ../shared/data/widerface)",
             category_help="COCO category / YOLO class read as faces (repeatable; default: the only one, or the "
                           "one named 'face')")
    g.add_argument("--size", type=int, default=d.size, help="square training input side")
    g.add_argument("--augment", choices=["full", "none"], default=d.augment,
                   help="full: photometric + data-anchor-sampling/SSD crops + flip; none: resize only")
    g.add_argument("--train-images", type=int, default=0, help="use only the first N training images (0: all)")
    g.add_argument("--min-face", type=float, default=d.min_face, help="drop annotated faces smaller than this (px)")
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers per rank")
    m = p.add_argument_group("model")
    m.add_argument("--network", default=d.network, choices=["paper"], help="network (the dual-shot paper DSFD)")
    m.add_argument("--backbone", default=None, choices=list(BACKBONES),
                   help="backbone of a fresh network (default resnet50); with --weights: the checkpoint's")
    m.add_argument("--width-mult", type=float, default=None, help="backbone width multiplier (default 1, tiny 1/8)")
    m.add_argument("--backbone-weights", "--pretrained", dest="backbone_weights", type=nonempty_text, help="pretrained backbone weights: a torchvision-format ImageNet state_dict (ResNet, VGG16), a RetinaFace MobileNet-0.25 checkpoint (mobilenet0.25), imagenet or a torchvision file (mobilenetv2)")
    m.add_argument("--fem-norm", action="store_true",
                   help="BatchNorm after every FEM conv (training from scratch; folded away on export)")
    add_weights(m, "fine-tune these DSFD weights (name such as default, file or URL): the whole network, "
                   "architecture taken from the checkpoint; not a resume", dest="init_weights")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="keep the backbone fixed (parameters and BatchNorm statistics): fine-tuning on few images")
    m.add_argument("--init-backbone", type=nonempty_text,
                   help="initialise only the backbone from these DSFD weights (FEM and heads start fresh)")
    m.add_argument("--bn", choices=["train", "frozen", "sync"], default=d.bn,
                   help="BatchNorm: batch statistics per rank, frozen (statistics and affine), or SyncBatchNorm")
    m.add_argument("--lambda", dest="lambda_", type=float, default=d.lambda_, help="PAL weight of the second shot")
    a = p.add_argument_group("ablation switches (defaults: the paper's full DSFD)")
    a.add_argument("--no-fem", dest="fem", action="store_false",
                   help="no Feature Enhance Module: the second shot runs on the backbone maps (plain dual shot)")
    a.add_argument("--no-pal", dest="pal", action="store_false",
                   help="no Progressive Anchor Loss: one shot (regular 16..512 anchors), a single shot's loss")
    a.add_argument("--fssd", action="store_true",
                   help="the paper's FSSD baseline: --no-fem --no-pal (one shot on the backbone's six maps)")
    a.add_argument("--anchor-aspect", type=float, default=d.anchor_aspect,
                   help="anchor height:width (DSFD 1.5; S3FD's square anchors: 1)")
    a.add_argument("--das-prob", type=float, default=d.das_prob,
                   help="probability of data-anchor-sampling crops (IAM: 0.4)")
    a.add_argument("--no-data-anchor-sampling", dest="das_prob", action="store_const", const=0.0,
                   help="IAM's data side off: SSD-style crops only (same as --das-prob 0)")
    a.add_argument("--matching", choices=["iam", "s3fd", "ssd"], default=d.matching,
                   help="anchor matching: iam (IoU >= 0.4), s3fd (>= 0.35 + scale compensation to 6 anchors "
                        "at IoU >= 0.1), ssd (>= 0.5)")
    a.add_argument("--match-iou", type=float, default=None, help="override the matching preset's IoU threshold")
    a.add_argument("--ignore-iou", type=float, default=d.ignore_iou,
                   help="background anchors with this IoU with an ignore region (invalid or too-small faces, faces "
                        "a crop dropped, COCO crowds) are neither faces nor mined negatives (0: off)")
    a.add_argument("--min-negatives", type=int, default=d.min_negatives,
                   help="hard negatives mined per image at least (0: only 3 x its faces, so photos without faces "
                        "teach nothing)")
    a.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("LO", "HI"),
                   help="side range of the SSD-style crops as a fraction of the short side (HI > 1: zoom-out)")
    o = p.add_argument_group("optimisation (defaults: the paper's schedule)")
    o.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split over the ranks)")
    o.add_argument("--iters", type=int, default=d.iters, help="optimizer steps")
    o.add_argument("--lr", type=float, default=d.lr, help="base learning rate")
    o.add_argument("--momentum", type=float, default=d.momentum)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--lr-steps", type=_int_list, default=None,
                   help="iterations where the lr is multiplied by --lr-gamma (default: 4/6 and 5/6 of --iters)")
    o.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    o.add_argument("--warmup-iters", type=int, default=None,
                   help="linear warm-up iterations (default min(500, iters // 10))")
    o.add_argument("--warmup-factor", type=float, default=d.warmup_factor, help="lr factor at the first iteration")
    o.add_argument("--clip-grad", type=float, default=d.clip_grad, help="max gradient norm (0: off)")
    o.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                   help="keep a moving average of the weights with this decay (e.g. 0.999; 0: off; it starts "
                        "at the run's first weights and, unless --weights are given, warms up); "
                        "validation, final.pt and the checkpoints' 'ema' entry use it")
    r = p.add_argument_group("runtime")
    add_device(r, "training")
    add_dtype(r, "autocast precision of the forward pass (weights and optimiser stay float32; float16 adds a "
                 "GradScaler)")
    r.add_argument("--amp", dest="dtype", choices=list(AMP_OF_DTYPE.values()),
                   action=deprecated_alias("--dtype", convert=DTYPE_OF_AMP.__getitem__))
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with CUDA and with CPU bf16)")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms, no cuDNN autotuning")
    r.add_argument("--seed", type=int, default=d.seed, help="initialisation, data order and augmentation")
    c = p.add_argument_group("output")
    c.add_argument("--out", type=nonempty_path, default=Path(d.out), help="output folder")
    c.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH|auto", type=nonempty_text,
                   help="continue from a checkpoint (auto / no value: <out>/last.pt when present)")
    c.add_argument("--val-every", type=int, default=d.val_every, help="validation loss every N iterations (0: off)")
    c.add_argument("--val-images", type=int, default=d.val_images, help="validate on the first N val images (0: all)")
    c.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="write <out>/last.pt every N iterations")
    c.add_argument("--keep-every", type=int, default=d.keep_every, help="also keep iter_XXXXXXX.pt every N (0: off)")
    c.add_argument("--log-every", type=int, default=d.log_every, help="log / progress interval (iterations)")
    c.add_argument("--stop-at", type=int, default=None,
                   help="stop at this iteration, saving a checkpoint as if interrupted (time-limited jobs)")
    add_progress(c)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``dsfd train`` arguments."""
    data = args.data
    if isinstance(data, list):  # the config stores plain strings (it is written into checkpoints as JSON)
        data = [str(d) for d in data]
        if len(data) == 1:
            data = data[0]
    dtype = getattr(args, "dtype", None)
    amp = AMP_OF_DTYPE[dtype] if dtype is not None else args.amp  # namespaces built by older callers: amp
    return TrainConfig(
        data=data, data_format=args.data_format,
        images=None if args.images is None else str(args.images), category=args.category, strict=args.strict,
        out=str(args.out), network=args.network, backbone=args.backbone, width_mult=args.width_mult,
        backbone_weights=args.backbone_weights, fem_norm=args.fem_norm, init_weights=args.init_weights,
        init_backbone=args.init_backbone, freeze_backbone=args.freeze_backbone,
        batch_size=args.batch_size, iters=args.iters, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_steps=args.lr_steps, lr_gamma=args.lr_gamma,
        warmup_iters=args.warmup_iters, warmup_factor=args.warmup_factor, size=args.size, augment=args.augment,
        train_images=args.train_images, min_face=args.min_face, workers=args.workers, device=args.device,
        amp=amp, channels_last=args.channels_last, bn=args.bn, lambda_=args.lambda_,
        fem=args.fem and not args.fssd, pal=args.pal and not args.fssd, anchor_aspect=args.anchor_aspect,
        das_prob=args.das_prob, matching=args.matching, match_iou=args.match_iou,
        ignore_iou=args.ignore_iou, min_negatives=args.min_negatives, crop_scale=tuple(args.crop_scale),
        val_every=args.val_every, val_images=args.val_images, ckpt_every=args.ckpt_every,
        keep_every=args.keep_every, log_every=args.log_every, seed=args.seed, deterministic=args.deterministic,
        clip_grad=args.clip_grad, ema=args.ema, resume=args.resume, stop_at=args.stop_at, progress=args.progress,
    )


def _error(msg: str) -> int:
    print(f"dsfd train: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dsfd train``; returns the exit code (0 also after a clean interruption)."""
    import os

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        return _error(str(e))
    from ..hub import WeightsDownloadError
    from .trainer import Trainer

    steps = cfg.resolved_lr_steps()
    logging.getLogger(__name__).info(
        "schedule: %d iterations, lr %g (x%g at %s), warm-up %d iterations from x%g",
        cfg.iters, cfg.lr, cfg.lr_gamma, list(steps), cfg.resolved_warmup_iters(), cfg.warmup_factor,
    )
    try:
        try:
            trainer = Trainer(cfg)
        except (ValueError, OSError, WeightsDownloadError) as e:
            # bad data, annotations (--strict), weights or flags: a message, not a traceback
            # (CheckpointError and AnnotationError are ValueErrors, FileNotFoundError an OSError)
            return _error(str(e))
        result = trainer.train()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"stopped at iteration {result['iteration']} ({result['reason']}); checkpoint {result['checkpoint']}")
    return 0
