"""The weight average of ``dsfd train --ema``: its arithmetic, what the trainer saves, exact resume, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

from dsfd.data_paths import wider_root
from dsfd.models import load_weights, read_checkpoint
from dsfd.training import TrainConfig, Trainer, load_checkpoint
from dsfd.training.ema import WeightEMA

WIDER = wider_root()
needs_wider = pytest.mark.skipif(
    not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file(),
    reason=f"WIDER FACE training data not found under {WIDER} (set DSFD_WIDER_ROOT)",
)


def tiny_cfg(out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(
        data=str(WIDER), out=str(out), backbone="tiny", size=128, batch_size=2, iters=6, lr=1e-2,
        workers=0, val_every=0, ckpt_every=0, log_every=1, progress=False, seed=5, train_images=6,
        deterministic=True, amp="none", fem_norm=True, ema=0.9,
    )
    base.update(kw)
    return TrainConfig(**base)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))


def test_average_follows_the_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    net = small_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ema = WeightEMA(net, 0.95)
    expected = {k: v.double() for k, v in start.items() if v.is_floating_point()}
    for n in range(1, 40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked += 1
        d = min(0.95, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(net)
        live = net.state_dict()
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * live[k].double()
    got = ema.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-5)
    assert int(got["1.num_batches_tracked"]) == 39
    assert ema.updates == 39
    # the warm-up ends at the long-run decay: (1 + n) / (10 + n) >= 0.95 from n = 161
    assert WeightEMA(net, 0.95).current_decay() == pytest.approx(2 / 11)


def test_state_dict_is_a_copy_and_applied_to_restores_the_live_weights():
    net = small_net()
    ema = WeightEMA(net, 0.5)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)  # decay 2/11 at the first step
    live = {k: v.clone() for k, v in net.state_dict().items()}
    sd = ema.state_dict()
    sd["0.weight"].zero_()
    assert not torch.equal(ema.shadow["0.weight"], sd["0.weight"])
    with ema.applied_to(net) as m:
        assert torch.equal(m[0].weight, ema.shadow["0.weight"])
        assert not torch.equal(m[0].weight, live["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k]), k


def test_bad_decay_and_foreign_state_are_refused():
    net = small_net()
    for decay in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            WeightEMA(net, decay)
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(ema=1.0)
    ema = WeightEMA(net, 0.9)
    with pytest.raises(RuntimeError, match="does not fit"):
        ema.load({"0.weight": torch.zeros(3, 2, 3, 3)}, 1)
    bad = ema.state_dict()
    bad["0.weight"] = torch.zeros(4, 2, 3, 3)
    with pytest.raises(RuntimeError, match="shape"):
        ema.load(bad, 1)


def test_cli_option_reaches_the_config():
    import argparse

    from dsfd.training.cli import add_parser, config_from_args

    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    assert config_from_args(parser.parse_args(["--ema", "0.999", "--out", "x"])).ema == 0.999
    assert config_from_args(parser.parse_args(["--out", "x"])).ema == 0.0


@needs_wider
def test_trainer_keeps_the_average_of_its_steps(tmp_path):
    steps: List[Dict[str, torch.Tensor]] = []
    tr = Trainer(tiny_cfg(tmp_path / "run"), callbacks=[lambda t: steps.append(
        {k: v.detach().clone() for k, v in t.model.state_dict().items()})])
    start = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    assert tr.train()["reason"] == "done"
    assert len(steps) == 6
    expected = {k: v.double() for k, v in start.items() if v.is_floating_point()}
    for n, live in enumerate(steps, 1):
        d = min(0.9, (1 + n) / (10 + n))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * live[k].double()
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["ema_updates"] == 6
    for k, v in expected.items():
        torch.testing.assert_close(ck["ema"][k].double(), v, rtol=1e-5, atol=1e-6)
    # "model" stays the live weights (exact resume); the average differs from them
    for k, v in steps[-1].items():
        assert torch.equal(ck["model"][k], v), k
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in expected)
    # every reader of weights files gets the average: final.pt, read_checkpoint, load_weights
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    sd, config = read_checkpoint(tmp_path / "run" / "last.pt")
    model = load_weights(tmp_path / "run" / "last.pt")
    for k, v in ck["ema"].items():
        assert torch.equal(final["model"][k], v), k
        assert torch.equal(sd[k], v), k
        assert torch.equal(model.state_dict()[k], v), k
    assert config is not None and config["backbone"] == "tiny"


@needs_wider
def test_validation_scores_the_average_and_leaves_the_live_weights(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path / "run", val_every=3, val_images=2, iters=3))
    tr.train()
    live = {k: v.clone() for k, v in tr.model.state_dict().items()}
    on_average = tr.validate()
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, live[k]), k
    ema, tr.ema = tr.ema, None
    on_live = tr.validate()
    tr.ema = ema
    assert on_average["total"] != on_live["total"]


@needs_wider
def test_resume_continues_the_average_exactly(tmp_path):
    ref = Trainer(tiny_cfg(tmp_path / "full")).train()
    assert ref["reason"] == "done"
    first = Trainer(tiny_cfg(tmp_path / "split", stop_at=4)).train()
    assert first["reason"] == "stop_at" and load_checkpoint(tmp_path / "split" / "last.pt")["ema_updates"] == 4
    Trainer(tiny_cfg(tmp_path / "split", resume="auto")).train()
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == 6
    for k, v in a["ema"].items():
        assert torch.equal(b["ema"][k], v), k


@needs_wider
def test_resume_of_a_run_without_average_starts_it_at_the_loaded_weights(tmp_path, caplog):
    Trainer(tiny_cfg(tmp_path / "run", ema=0.0, stop_at=3)).train()
    tr = Trainer(tiny_cfg(tmp_path / "run", resume="auto"))
    assert "no weight average" in caplog.text
    assert tr.ema is not None and tr.ema.updates == 0
    for k, v in tr.model.state_dict().items():
        assert torch.equal(tr.ema.shadow[k], v), k


def test_without_warmup_the_decay_is_constant_from_the_first_step():
    net = small_net()
    start = net[0].weight.detach().clone()
    ema = WeightEMA(net, 0.99, warmup=False)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)
    assert ema.current_decay() == 0.99
    torch.testing.assert_close(ema.shadow["0.weight"], start + 0.01)


@needs_wider
def test_a_fine_tune_average_starts_at_its_weights_without_warmup(tmp_path):
    Trainer(tiny_cfg(tmp_path / "first", ema=0.0, iters=2)).train()
    scratch = Trainer(tiny_cfg(tmp_path / "scratch", iters=1))
    assert scratch.ema.warmup
    tune = Trainer(tiny_cfg(tmp_path / "tune", init_weights=str(tmp_path / "first" / "final.pt"), iters=1))
    assert not tune.ema.warmup and tune.ema.current_decay() == 0.9
    first = load_checkpoint(tmp_path / "first" / "final.pt")["model"]
    for k, v in tune.ema.shadow.items():
        assert torch.equal(v, first[k]), k
