"""APGA and its baselines: the reference agent loss by hand, the three updates, the toy region test (the agent's
masks find the one region the label depends on, and follow it when it moves), Cutout's rectangles."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlmask.agents import AGENTS
from rlmask.agents.segmentation import BLACK, CutoutOptions, erase_masks, reference_agent_loss, remove_pixels
from rlmask.data import DEFAULT_MEAN, DEFAULT_STD
from rlmask.train.loop import make_optimizer
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task


def test_reference_agent_loss_matches_a_hand_computation():
    # Two samples of two pixels: p = (0.8, 0.5) and (0.2, 0.5); M = 1[p > 0.5] = (1, 0) and (0, 0).
    p = torch.tensor([[0.8, 0.5], [0.2, 0.5]]).view(2, 1, 1, 2)
    logits = torch.logit(p)
    action = (p > 0.5).float()
    advantage = torch.tensor([2.0, -1.0])
    ln = math.log
    # Per sample, BCE is the mean over its two pixels.
    bce_m = [(-ln(0.8) - ln(0.5)) / 2, (-ln(1 - 0.2) - ln(1 - 0.5)) / 2]  # BCE(p, M)
    bce_0 = [(-ln(1 - 0.8) - ln(1 - 0.5)) / 2, (-ln(1 - 0.2) - ln(1 - 0.5)) / 2]  # BCE(p, 0)
    bce_1 = [(-ln(0.8) - ln(0.5)) / 2, (-ln(0.2) - ln(0.5)) / 2]  # BCE(p, 1)
    terms = [
        100 * 2.0 * bce_m[0] + 0.1 * 2.0 * bce_0[0] + 0.01 * 2.0 * bce_1[0],
        100 * -1.0 * bce_m[1] + 0.1 * 1.0 * bce_0[1] + 0.01 * 1.0 * bce_1[1],
    ]
    expected = sum(terms) / 2  # = 23.0556...
    assert abs(expected - 23.05562) < 1e-4
    got = reference_agent_loss(logits, action, advantage)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # A batch reward (the same R for every sample) is the reference's loss on BCE means over the whole batch.
    flat = nn.BCELoss()
    same = torch.tensor([0.5, 0.5])
    reference = (
        100 * 0.5 * flat(p, action)
        + 0.1 * 0.5 * flat(p, torch.zeros_like(p))
        + 0.01 * 0.5 * flat(p, torch.ones_like(p))
    )
    assert reference_agent_loss(logits, action, same).item() == pytest.approx(reference.item(), rel=1e-6)


def test_removed_pixels_are_black_after_normalisation_not_zero():
    x = torch.zeros(1, 3, 2, 2)
    out = remove_pixels(x, torch.tensor([[[[True, False], [False, False]]]]))
    assert BLACK == pytest.approx((0 - DEFAULT_MEAN) / DEFAULT_STD)
    assert torch.all(out[0, :, 0, 0] == BLACK) and torch.all(out[0, :, 1, 1] == 0)


class CountingStep(TrainStep):
    """A TrainStep that records which optimisers each update stepped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def update(self, loss, *, model=True, agent=True):
        self.calls.append((model, agent, self.model.training))
        super().update(loss, model=model, agent=agent)


def test_one_step_is_three_updates_in_the_reference_order_with_the_baseline_from_the_first_reward():
    task = build_task("classify")
    torch.manual_seed(0)
    model = task.build_model("resnet10t", 2, 1, small_stem=True)
    agent = AGENTS["apga"].build(16, 1, seed=0, options={"agent_channels": [4, 8]})
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 0)
    o = agent.optimizer_options()
    assert (o.optimizer, o.lr, o.schedule) == ("adam", 1e-3, "constant")
    agent_opt = make_optimizer(agent.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay)
    ctx = CountingStep(model, task.loss, opt, agent, agent_opt, device=torch.device("cpu"), total_steps=2)
    model.train()
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    logs = agent.train_step(ctx.begin(0, 0), x, y)
    # clean classifier step, agent step (classifier restored to train mode afterwards), kept-image step
    assert ctx.calls == [(True, False, True), (False, True, True), (True, False, True)]
    assert model.training
    # The reference form updates b first: at the first batch b = its mean reward.
    assert logs["policy/baseline"].item() == pytest.approx(logs["policy/reward"].item(), abs=1e-6)
    assert agent.baseline.item() == pytest.approx(logs["policy/reward"].item(), abs=1e-6)
    assert AGENTS["apga-reference"].make_options().agent_lr == 1e-5


class RecordingStep(TrainStep):
    """A TrainStep that records each loss call: (batch size, train mode, per-sample losses)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses = []

    def loss(self, *inputs, **kwargs):
        out = super().loss(*inputs, **kwargs)
        self.losses.append((inputs[0].shape[0], self.model.training, out.detach().float().clone()))
        return out


def _one_apga_step(clean_loss: str):
    """One seeded APGA step on a tiny classifier: its logs and the step context's recorded loss calls."""
    task = build_task("classify")
    torch.manual_seed(0)
    model = task.build_model("resnet10t", 2, 1, small_stem=True)
    agent = AGENTS["apga"].build(16, 1, seed=0, options={"agent_channels": [4, 8], "clean_loss": clean_loss})
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 0)
    o = agent.optimizer_options()
    agent_opt = make_optimizer(agent.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay)
    ctx = RecordingStep(model, task.loss, opt, agent, agent_opt, device=torch.device("cpu"), total_steps=2)
    model.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 16, 16, generator=g), torch.tensor([0, 1, 0, 1])
    return agent.train_step(ctx.begin(0, 0), x, y), ctx.losses


def test_reference_clean_loss_is_the_clean_steps_own_loss_and_saves_a_forward():
    eval_logs, eval_calls = _one_apga_step("eval")
    step_logs, step_calls = _one_apga_step("step")
    # eval: clean step (B, train), reward forward of [x; x_adv] (2B, eval), kept step (B, train)
    assert [(n, train) for n, train, _ in eval_calls] == [(4, True), (8, False), (4, True)]
    clean_eval, adv_eval = eval_calls[1][2].chunk(2)
    assert eval_logs["policy/reward"].item() == pytest.approx((adv_eval - clean_eval).mean().item(), abs=1e-6)
    # step: the reward's forward holds x_adv alone; L0 is the clean step's per-sample loss (the reference's)
    assert [(n, train) for n, train, _ in step_calls] == [(4, True), (4, False), (4, True)]
    assert torch.equal(step_calls[0][2], eval_calls[0][2])  # the same clean step
    # the same adversarial images through the same stepped classifier (a batch of B instead of 2B: kernels may differ)
    assert torch.allclose(step_calls[1][2], adv_eval, atol=1e-4)
    assert step_logs["policy/reward"].item() == pytest.approx((adv_eval - step_calls[0][2]).mean().item(), abs=1e-6)
    assert AGENTS["apga-reference"].make_options().clean_loss == "step"
    assert AGENTS["apga"].make_options().clean_loss == "eval"


# ---------------------------------------------------------------------------------------------
# The toy region test
# ---------------------------------------------------------------------------------------------
S, K = 16, 6  # image side, side of the square region the label depends on


def region(top: int, left: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, S, S, dtype=torch.bool)
    mask[..., top : top + K, left : left + K] = True
    return mask


def toy_batch(g: torch.Generator, n: int, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; inside ``where`` the noise is shifted by +-0.3 with the label: nothing else tells it."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, S, S, generator=g)
    return torch.where(where, x + 0.3 * (2 * y.float() - 1).view(-1, 1, 1, 1), x), y


def train_toy(where: torch.Tensor, steps: int = 2000, seed: int = 0):
    """APGA (Bernoulli policy, 2x2-pixel cells) beside a tiny CNN; returns (rewards per step, IoU of the
    removed mask p > 0.5 with the region, averaged over 64 fresh images)."""
    task = build_task("classify")
    # One thread, whatever the caller set: the run's outcome depends on the order of float sums (with 2
    # threads, seed 0 at 1500 steps reached IoU 0.49 with the region moved, 0.73 with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_toy(task, where, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_toy(task, where: torch.Tensor, steps: int, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 64, 2))
    options = {
        "agent_channels": [8, 16],
        "agent_policy": "bernoulli",
        "policy_grid": 8,
        "max_area": 0.15,
        "agent_lr": 3e-3,
    }
    agent = AGENTS["apga"].build(S, 1, seed=seed, options=options)
    o = agent.optimizer_options()
    ctx = TrainStep(
        model,
        task.loss,
        make_optimizer(model.parameters(), "sgd", 0.05, 0.9, 0),
        agent,
        make_optimizer(agent.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay),
        device=torch.device("cpu"),
        total_steps=steps,
    )
    g = torch.Generator().manual_seed(seed + 100)
    model.train()
    agent.train()
    rewards = [
        agent.train_step(ctx.begin(0, s), *toy_batch(g, 32, where))["policy/reward"].item() for s in range(steps)
    ]
    x, _ = toy_batch(torch.Generator().manual_seed(999), 64, where)
    removed = agent.sample_masks(x)["probability"] > 0.5  # (64, 1, S, S)
    iou = ((removed & where).flatten(1).sum(1) / (removed | where).flatten(1).sum(1).clamp(min=1)).mean().item()
    return rewards, iou, removed


@pytest.fixture(scope="module")
def top_left():
    return train_toy(region(2, 2))


def test_toy_agent_masks_the_region_the_label_depends_on_and_its_reward_rises(top_left):
    rewards, iou, _ = top_left
    assert iou > 0.5, iou
    first, last = sum(rewards[:100]) / 100, sum(rewards[-100:]) / 100
    assert last > first + 0.5, (first, last)


def test_toy_masks_move_with_the_region(top_left):
    rewards, iou, removed = train_toy(region(8, 8))
    # Measured (one thread): at 900 steps IoU 0.41 here against 0.62 top-left; the moved region is found later,
    # then covered as tightly: 0.73 and 0.89 at 1500 steps; seeds 1 and 2 reach 0.67 and 0.97 at 1500.
    assert iou > 0.5, iou
    assert sum(rewards[-100:]) / 100 > sum(rewards[:100]) / 100 + 0.5
    old = region(2, 2)
    overlap_old = ((removed & old).flatten(1).sum(1) / old.sum()).mean().item()
    assert overlap_old < 0.2, overlap_old  # the old region is left alone


# ---------------------------------------------------------------------------------------------
# Cutout
# ---------------------------------------------------------------------------------------------
def test_cutout_erases_one_rectangle_of_the_usual_size_in_half_the_images():
    cfg = CutoutOptions()
    masks = erase_masks(2000, (28, 28), cfg, torch.Generator().manual_seed(0))[:, 0]  # (n, H, W)
    area = masks.flatten(1).float().mean(1)
    erased = area > 0
    assert 0.45 < erased.float().mean().item() < 0.55
    # Rounding h and w moves the area fraction a little beyond [0.02, 0.33] at 28 px.
    assert area[erased].min() >= 0.01 and area[erased].max() <= 0.37
    rows, cols = masks.any(2), masks.any(1)  # (n, H), (n, W)
    box = rows.sum(1) * cols.sum(1)
    assert torch.equal(box[erased], masks.flatten(1).sum(1)[erased])  # exactly one filled rectangle
    again = erase_masks(2000, (28, 28), cfg, torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(masks, again)
