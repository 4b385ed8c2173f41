"""Schedules point by point, against torch's own schedulers, and through a LambdaLR resume."""

import io

import pytest
import torch

from rlmask.errors import UserError
from rlmask.train.schedules import lr_factor, make_scheduler


def torch_factors(scheduler_cls, steps, **kwargs):
    """Multipliers that a torch scheduler gives over ``steps`` steps of a base lr of 1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = scheduler_cls(opt, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_key_points():
    kw = dict(schedule="cosine", warmup_steps=10, warmup_start=0.2, min_factor=0.1)
    assert lr_factor(0, 110, **kw) == pytest.approx(0.2)
    assert lr_factor(5, 110, **kw) == pytest.approx(0.6)  # halfway up from 0.2 to 1
    assert lr_factor(10, 110, **kw) == pytest.approx(1.0)
    assert lr_factor(60, 110, **kw) == pytest.approx(0.55)  # halfway down from 1 to 0.1
    assert lr_factor(110, 110, **kw) == pytest.approx(0.1)
    assert lr_factor(500, 110, **kw) == pytest.approx(0.1)
    assert lr_factor(0, 100, schedule="cosine") == 1.0
    after = [lr_factor(s, 110, **kw) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_cosine_matches_torch_cosine_annealing():
    ours = [lr_factor(s, 20, schedule="cosine") for s in range(20)]
    assert ours == pytest.approx(torch_factors(torch.optim.lr_scheduler.CosineAnnealingLR, 20, T_max=20))


def test_step_decay_matches_torch_steplr_with_warmup_on_top():
    ours = [lr_factor(s, 0, schedule="step", step_size=4, gamma=0.5) for s in range(13)]
    assert ours == pytest.approx(torch_factors(torch.optim.lr_scheduler.StepLR, 13, step_size=4, gamma=0.5))
    assert lr_factor(8, 0, schedule="step", step_size=4, gamma=0.5) == pytest.approx(0.25)
    # Warm-up over 6 steps from 0: step 5 is 5/6 up, and already one decay (5 // 4 = 1) in.
    warm = dict(schedule="step", step_size=4, gamma=0.5, warmup_steps=6)
    assert lr_factor(5, 0, **warm) == pytest.approx(5 / 6 * 0.5)
    assert lr_factor(6, 0, **warm) == pytest.approx(0.5)


def test_constant_with_reference_finetune_warmup_matches_linearlr():
    # Reference fine-tune: linear warm-up from 0.01 * lr over 7 epochs, then constant.
    ours = [lr_factor(s, 10, schedule="constant", warmup_steps=7, warmup_start=0.01) for s in range(10)]
    theirs = torch_factors(torch.optim.lr_scheduler.LinearLR, 10, start_factor=0.01, total_iters=7)
    assert ours == pytest.approx(theirs)
    assert lr_factor(3, 10, schedule="constant") == 1.0


def test_factors_stay_in_unit_interval():
    for schedule in ("cosine", "step", "constant"):
        for s in range(0, 40):
            f = lr_factor(s, 30, schedule=schedule, warmup_steps=5, step_size=7, min_factor=0.05)
            assert 0.0 <= f <= 1.0


def test_bad_options_raise_user_error():
    with pytest.raises(UserError, match="schedule"):
        lr_factor(0, 10, schedule="linear")
    with pytest.raises(UserError, match="step_size"):
        lr_factor(0, 10, schedule="step")
    with pytest.raises(UserError, match="min_factor"):
        lr_factor(0, 10, schedule="cosine", min_factor=2.0)


def test_lambdalr_state_round_trip():
    def build():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5, momentum=0.9)
        return opt, make_scheduler(opt, 12, schedule="cosine", warmup_steps=3, warmup_start=0.1)

    opt, sched = build()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # 0.5 * warmup_start at step 0
    for _ in range(5):
        opt.step()
        sched.step()
    buffer = io.BytesIO()  # through torch.save / weights_only load, as a checkpoint goes
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed_opt, resumed = build()
    resumed_opt.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    for _ in range(5):
        for o, s in ((opt, sched), (resumed_opt, resumed)):
            o.step()
            s.step()
        assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert resumed.get_last_lr() == sched.get_last_lr()
    expected = 0.5 * lr_factor(10, 12, schedule="cosine", warmup_steps=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
