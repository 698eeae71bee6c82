"""Trainer tests: schedule, sharding, atomic checkpoints, exact resume, DDP equivalence, overfitting, CLI.

All runs use the tiny network (``backbone="tiny"``) at 128-160 px on CPU and a
handful of real WIDER FACE training images; tests that need the data skip
when it is absent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

import dsfd.ops as ops
from dsfd.data import EvalTransform, WiderFaceDataset, collate_detection
from dsfd.data_paths import wider_root
from dsfd.losses import ProgressiveAnchorLoss
from dsfd.models import load_weights
from dsfd.training import (
    DistInfo,
    IndexSubset,
    ShardedBatchSampler,
    TrainConfig,
    Trainer,
    WarmupMultiStep,
    capture_rng_state,
    load_checkpoint,
    pal_loss,
    restore_rng_state,
    save_atomic,
)
from dsfd.training import checkpoint as ckpt_mod

WIDER = wider_root()
needs_wider = pytest.mark.skipif(
    not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file(),
    reason=f"WIDER FACE training data not found under {WIDER} (set DSFD_WIDER_ROOT)",
)


def tiny_cfg(out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(
        data=str(WIDER), out=str(out), backbone="tiny", size=128, batch_size=2, iters=7, lr=1e-2,
        workers=0, val_every=0, ckpt_every=0, log_every=1, progress=False, seed=3, train_images=6,
        deterministic=True,
        amp="none",  # exact comparisons; "auto" would pick bf16 on CPUs with bf16 in hardware
    )
    base.update(kw)
    return TrainConfig(**base)


def read_log(out: Path) -> List[Dict[str, Any]]:
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- pure units


def test_paper_schedule_scaled_to_iters():
    cfg = TrainConfig(iters=60_000)
    assert cfg.resolved_lr_steps() == (40_000, 50_000)
    assert cfg.resolved_warmup_iters() == 500
    f = WarmupMultiStep(cfg.resolved_lr_steps(), 0.1, 500, 0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(250) == pytest.approx(0.55)
    assert f(500) == 1.0 and f(39_999) == 1.0
    assert f(40_000) == pytest.approx(0.1) and f(50_000) == pytest.approx(0.01)
    assert TrainConfig(iters=30).resolved_lr_steps() == (20, 25)
    # the optimizer sees factor(i) at step i
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupMultiStep((3,), 0.1, 2, 0.5))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-4, 1e-4])


def test_sharded_batches_concatenate_to_the_single_process_batch():
    single = ShardedBatchSampler(10, 4, seed=5)
    ranks = [ShardedBatchSampler(10, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    assert single.batches_per_epoch == 2  # remainder of an epoch is dropped
    it_single = iter(single)
    it_ranks = [iter(s) for s in ranks]
    seen_epoch0 = []
    for i in range(5):
        b = next(it_single)
        assert b == next(it_ranks[0]) + next(it_ranks[1])
        assert b == single.batch(i)
        assert all(e == i // 2 for _, e in b)
        if i < 2:
            seen_epoch0 += [j for j, _ in b]
    assert len(set(seen_epoch0)) == 8  # no repeats within an epoch
    # resuming at iteration 3 continues the same stream
    resumed = iter(ShardedBatchSampler(10, 4, seed=5, start_iteration=3))
    assert next(resumed) == single.batch(3)
    with pytest.raises(ValueError):
        ShardedBatchSampler(10, 3, world_size=2)


def test_pal_loss_single_process_equals_criterion():
    g = torch.Generator().manual_seed(0)
    B, A = 2, 300
    anchors = torch.cat([torch.rand(A, 2, generator=g), torch.rand(A, 2, generator=g) * 0.3 + 0.02], 1)
    shots = [(torch.randn(B, A, 4, generator=g), torch.randn(B, A, 2, generator=g), anchors) for _ in range(2)]
    gt = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], [[0.2, 0.3, 0.6, 0.7], [0, 0, 0, 0]]])
    counts = torch.tensor([2, 1])
    crit = ProgressiveAnchorLoss(lambda_=0.7)
    total_ref, parts_ref = crit(shots[0], shots[1], gt, counts)
    total, parts = pal_loss(crit, shots[0], shots[1], gt, counts, DistInfo())
    assert torch.equal(total, total_ref)
    for k in ("first_loss_l", "first_loss_c", "second_loss_c", "total"):
        assert torch.allclose(parts[k], parts_ref[k])


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}, "iteration": 1}, path)
    assert load_checkpoint(path)["iteration"] == 1

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_rng_state_roundtrip_through_a_weights_only_file(tmp_path):
    import random

    state = capture_rng_state()
    save_atomic({"model": {}, "rng": state}, tmp_path / "r.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Reference: 7 iterations in one go (workers=0)."""
    if not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file():
        pytest.skip(f"WIDER FACE training data not found under {WIDER}")
    out = tmp_path_factory.mktemp("full")
    res = Trainer(tiny_cfg(out)).train()
    assert res["iteration"] == 7 and res["reason"] == "done"
    return load_checkpoint(out / "last.pt")


@needs_wider
@pytest.mark.parametrize("workers,how", [(0, "signal"), (2, "stop_at")])
def test_resume_is_exact(tmp_path, uninterrupted, workers, how):
    out = tmp_path / "run"
    if how == "signal":  # a real SIGINT delivered during iteration 4: saved at the boundary
        def interrupt(tr: Trainer) -> None:
            if tr.iteration == 4:
                os.kill(os.getpid(), signal.SIGINT)

        first = Trainer(tiny_cfg(out, workers=workers), callbacks=[interrupt]).train()
        assert first["reason"] == "signal"
    else:
        first = Trainer(tiny_cfg(out, workers=workers, stop_at=4)).train()
        assert first["reason"] == "stop_at"
    assert first["iteration"] == 4
    mid = load_checkpoint(out / "last.pt")
    assert mid["iteration"] == 4 and mid["data"]["epoch"] == 1 and mid["data"]["batch_in_epoch"] == 1
    assert not (out / "final.pt").exists()

    second = Trainer(tiny_cfg(out, workers=workers, resume="auto")).train()
    assert second["iteration"] == 7 and second["reason"] == "done"
    final = load_checkpoint(out / "last.pt")
    ref = uninterrupted
    assert final["model"].keys() == ref["model"].keys()
    for k, v in ref["model"].items():
        assert torch.equal(final["model"][k], v), k
    for pid, st in ref["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][pid]["momentum_buffer"], st["momentum_buffer"])
    assert final["scheduler"]["last_epoch"] == ref["scheduler"]["last_epoch"] == 7
    assert torch.equal(final["rng"]["torch"], ref["rng"]["torch"])
    stops = [r for r in read_log(out) if r["type"] == "stop"]
    assert [s["iter"] for s in stops] == [4, 7]


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: Dict[str, Any], result_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tr = Trainer(TrainConfig.from_dict(cfg_dict))
        assert tr.info.world_size == world and tr.local_batch == cfg_dict["batch_size"] // world
        batch = collate_detection([tr.train_dataset[item] for item in tr.sampler_probe.batch(0)])
        loss, parts = tr.forward_loss(batch)
        loss.backward()
        total = parts["total"].clone()
        dist.all_reduce(total)
        if rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None}
            torch.save({"grads": grads, "total": total}, result_file)
        tr.optimizer.zero_grad(set_to_none=True)
        tr.train()
    finally:
        dist.destroy_process_group()


@needs_wider
def test_ddp_two_ranks_match_single_process(tmp_path):
    """2 gloo ranks x batch 2 == one process x batch 4: gradients, loss and weights after 2 steps."""
    import torch.multiprocessing as mp

    # Frozen BatchNorm makes every sample's computation independent of the batch
    # split; it needs calibrated statistics (the random init's mean 0 / var 1
    # give a diverging un-normalised network), so start from calibrated weights.
    from dsfd.models import build_model

    torch.manual_seed(0)
    model = build_model("paper", "tiny")
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    base = WiderFaceDataset(WIDER, "train", transform=EvalTransform(128))
    with torch.no_grad():
        model.train()(torch.stack([base[i][0] for i in range(4)]))
    init_file = tmp_path / "calibrated.pt"
    torch.save({"model": model.state_dict(), "config": model.config}, init_file)

    common = dict(iters=2, batch_size=4, train_images=4, bn="frozen", lr=0.02, warmup_iters=0, weight_decay=0.0,
                  init_weights=str(init_file))
    cfg_ddp = tiny_cfg(tmp_path / "ddp", **common)
    result_file = str(tmp_path / "ddp_grads.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg_ddp.to_dict(), result_file), nprocs=2, join=True)
    ddp = torch.load(result_file, weights_only=True)

    tr = Trainer(tiny_cfg(tmp_path / "single", **common))
    batch = collate_detection([tr.train_dataset[item] for item in tr.sampler_probe.batch(0)])
    loss, parts = tr.forward_loss(batch)
    loss.backward()
    assert torch.allclose(ddp["total"], parts["total"], rtol=1e-5)
    grads = {n: p.grad for n, p in tr.model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys() and len(grads) > 10
    for n, g in grads.items():
        tol = 1e-4 * g.abs().max().item() + 1e-7
        assert (ddp["grads"][n] - g).abs().max().item() <= tol, n
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.optimizer.zero_grad(set_to_none=True)
    tr.train()
    w_single = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    w_ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    moved = max((w_single[k].float() - init[k].float()).abs().max().item() for k in init)
    assert moved > 1e-4  # the comparison below is not vacuous
    for k, v in w_single.items():  # the 2-step updates agree to float accumulation error
        err = (w_ddp[k].float() - v.float()).abs().max().item()
        step = (v.float() - init[k].float()).abs().max().item()
        assert err <= 1e-3 * step + 1e-6, (k, err, step)


# --------------------------------------------------------------------------- overfitting


class _CachedDataset(torch.utils.data.Dataset):
    """Decodes each image once (no augmentation, so every epoch sees the same samples)."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.items = [base[i] for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: Any) -> Any:
        return self.items[item[0] if isinstance(item, (tuple, list)) else item]


@needs_wider
@pytest.mark.slow
def test_overfits_a_few_training_images(tmp_path):
    size = 160
    base = WiderFaceDataset(WIDER, "train", transform=EvalTransform(size))
    # the first 4 images with 1-3 faces, all at least 100 px (>= ~15 px at 160)
    chosen = []
    for i, a in enumerate(base.annotations):
        b = a.boxes
        if 1 <= len(b) <= 3 and np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).min() >= 100:
            chosen.append(i)
        if len(chosen) == 4:
            break
    ds = _CachedDataset(IndexSubset(base, chosen))
    # 80 iterations at lr 1e-2 (warm-up 8), x0.1 for the last 20
    cfg = tiny_cfg(tmp_path, size=size, batch_size=4, iters=80, lr=1e-2, lr_steps=[60], augment="none",
                   log_every=5, deterministic=False, seed=2)
    tr = Trainer(cfg, train_dataset=ds)
    tr.train()
    losses = [r["total"] for r in read_log(tmp_path) if r["type"] == "train"]
    assert losses[-1] < 0.5 * losses[0], losses

    model = tr.model.eval()
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        out = model(images).second
    scores = torch.softmax(out.conf, -1)[..., 1]
    boxes = ops.decode_boxes(out.loc, out.anchors)
    det, det_scores, counts = ops.batched_nms(boxes, scores, 0.3, 0.05, 500, 5)
    hits = total = 0
    for i in range(len(ds)):
        gt = ds[i][1]
        k = int(counts[i])
        total += len(gt)
        if k:
            hits += int((ops.box_iou(gt, det[i, :k]).max(1).values > 0.5).sum())
    assert hits >= 0.75 * total, (hits, total)


# --------------------------------------------------------------------------- CLI


@needs_wider
def test_cli_train_resume_and_load_weights(tmp_path):
    from dsfd.cli import main

    out = tmp_path / "cli"
    common = ["train", "--data", str(WIDER), "--backbone", "tiny", "--size", "128", "--batch-size", "2",
              "--train-images", "4", "--workers", "0", "--out", str(out), "--val-every", "2",
              "--val-images", "2", "--ckpt-every", "2", "--log-every", "1", "--no-progress", "--seed", "1",
              "--fem-norm"]
    assert main(common + ["--iters", "4", "--stop-at", "3"]) == 0
    assert main(common + ["--iters", "4", "--resume"]) == 0
    log = read_log(out)
    types = [r["type"] for r in log]
    assert types.count("start") == 2 and types.count("val") >= 2 and types.count("checkpoint") >= 2
    start2 = [r for r in log if r["type"] == "start"][1]
    assert start2["iter"] == 3 and start2["resumed_from"].endswith("last.pt")
    assert start2["args"]["batch_size"] == 2 and start2["config"]["backbone"] == "tiny"
    train = [r for r in log if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    for key in ("first_loss_l", "first_loss_c", "second_loss_l", "second_loss_c", "lr", "images_per_s"):
        assert key in train[0]
    val = [r for r in log if r["type"] == "val"][-1]
    assert val["images"] == 2 and val["total"] > 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["iteration"] == 4 and ck["args"]["iters"] == 4
    for f in ("last.pt", "final.pt"):
        model = load_weights(out / f)
        assert model.config["backbone"] == "tiny" and model.config["fem_norm"] is True and model.fem.has_norm
        for k, v in model.state_dict().items():
            assert torch.equal(v, ck["model"][k]), k


def test_cli_train_mixes_data_roots(tmp_path):
    """``--data A --data B``: both roots are read, counted in the log and in the checkpoint."""
    from test_data import make_wider_tree

    from dsfd.cli import main

    a = make_wider_tree(tmp_path / "a", n_images=3, size=(128, 160), seed=1)
    b = make_wider_tree(tmp_path / "b", n_images=5, size=(128, 160), seed=2)
    out = tmp_path / "run"
    assert main(["train", "--data", str(a), "--data", str(b), "--backbone", "tiny", "--size", "128",
                 "--batch-size", "2", "--iters", "2", "--workers", "0", "--out", str(out), "--val-every", "0",
                 "--no-progress", "--dtype", "float32"]) == 0
    start = [r for r in read_log(out) if r["type"] == "start"][0]
    assert start["args"]["data"] == [str(a), str(b)]
    assert start["train_images"] == 8
    assert start["data_roots"] == [{"root": str(a), "images": 3, "boxes": 9},
                                   {"root": str(b), "images": 5, "boxes": 15}]
    assert load_checkpoint(out / "last.pt")["data"]["roots"] == start["data_roots"]
    # one root stays a plain string in the config
    assert TrainConfig(data=str(a)).data_roots() == [str(a)] and TrainConfig().data_roots() == []


def test_amp_auto_follows_cpu_bf16_support(tmp_path, monkeypatch):
    from dsfd.training.trainer import _amp_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    assert _amp_dtype(TrainConfig(amp="auto"), cpu) == torch.bfloat16
    monkeypatch.setenv("DSFD_CPU_BF16", "0")
    assert _amp_dtype(TrainConfig(amp="auto"), cpu) is None
    assert _amp_dtype(TrainConfig(amp="bf16"), cpu) == torch.bfloat16  # asked for explicitly
    with pytest.raises(ValueError, match="float16 needs a CUDA"):
        _amp_dtype(TrainConfig(amp="fp16"), cpu)


def test_cpu_bf16_training_step_close_to_fp32():
    """A bf16-autocast channels_last CPU step gives a finite loss and gradients close to fp32's.

    The tiny network's FEM branch widths (21, 42, 85 at 320 px) are the ones
    for which oneDNN's bf16 channels_last dilated-conv weight gradient is NaN
    (or crashes) on AVX-512 BF16 CPUs; the FEM routes those convs through
    NCHW, which this test would catch if it stopped doing so.
    """
    from dsfd.models import build_model

    torch.manual_seed(0)
    model = build_model("paper", "tiny", fem_norm=True).train()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 320, 320, generator=g) * 255 - 117
    gt = torch.tensor([[[0.1, 0.1, 0.3, 0.35], [0.5, 0.4, 0.9, 0.95]], [[0.2, 0.2, 0.26, 0.28], [0, 0, 0, 0]]])
    counts = torch.tensor([2, 1])
    crit = ProgressiveAnchorLoss()

    def step(amp: bool):
        m = model
        x = images
        if amp:
            import copy

            m = copy.deepcopy(model).to(memory_format=torch.channels_last)
            x = images.contiguous(memory_format=torch.channels_last)
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(x, shots=(1, 2))
        loss, _ = crit(out.first, out.second, gt, counts)
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in m.parameters() if p.grad is not None])
        return loss.detach(), grads

    loss32, g32 = step(False)
    loss16, g16 = step(True)
    assert torch.isfinite(loss16) and torch.isfinite(g16).all()
    assert abs(loss16.item() - loss32.item()) <= 0.05 * loss32.item()
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.95, cos


# --------------------------------------------------------------------------- CUDA


@needs_wider
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_channels_last_resume(tmp_path, amp):
    """AMP (GradScaler for fp16) + channels_last on the GPU; stop / resume continues the same run.

    Bit-exactness on CUDA needs every kernel to be deterministic (atomics in a
    backward kernel break it), so the comparison allows float32 round-off.
    """
    kw = dict(device="cuda", amp=amp, channels_last=True, iters=4, batch_size=4, train_images=8)
    full = Trainer(tiny_cfg(tmp_path / "full", **kw))
    assert full.channels_last and full.scaler.is_enabled() == (amp == "fp16")
    assert full.train()["reason"] == "done"
    out = tmp_path / "run"
    assert Trainer(tiny_cfg(out, stop_at=2, **kw)).train()["iteration"] == 2
    mid = load_checkpoint(out / "last.pt")
    assert (mid["scaler"] is not None) == (amp == "fp16")
    Trainer(tiny_cfg(out, resume="auto", **kw)).train()
    ref = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    got = load_checkpoint(out / "last.pt")["model"]
    for k, v in ref.items():
        assert torch.allclose(got[k].float(), v.float(), rtol=1e-4, atol=1e-6), k
    assert all(r["type"] != "train" or np.isfinite(r["total"]) for r in read_log(out))
