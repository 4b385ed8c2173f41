"""--mask-schedule: every masking agent's masks, noise and erasures anneal to the clean image; constant changes
nothing."""

import pytest
import torch

from rlmask.agents import AGENTS
from rlmask.agents.base import blend, mask_strength, soften
from rlmask.cli import main
from rlmask.train.loop import make_optimizer
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task


def test_strength_schedules():
    assert [mask_strength("constant", p) for p in (0, 0.5, 0.99)] == [1.0, 1.0, 1.0]
    assert mask_strength("linear", 0.25) == 0.75 and mask_strength("linear", 1.0) == 0.0
    assert mask_strength("cosine", 0.0) == 1.0 and mask_strength("cosine", 0.5) == pytest.approx(0.5)
    x, m = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert soften(m, 1.0) is m and blend(x, m, 1.0) is m  # full strength: the very tensors, numbers unchanged
    assert torch.allclose(soften(m, 0.0), torch.ones_like(m)) and torch.equal(blend(x, m, 0.0), x)


class InputsStep(TrainStep):
    """Records the first input of every loss call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs = []

    def loss(self, *inputs, **kwargs):
        self.inputs.append((inputs[0].detach().clone(), kwargs.get("target")))
        return super().loss(*inputs, **kwargs)


@pytest.mark.parametrize(
    "method,options",
    [
        ("pgnm-reinforce", {}),
        ("random-mask", {}),
        ("gaussian-noise", {}),
        ("apga", {"agent_channels": [4, 8]}),
        ("cutout", {"p": 1.0}),
        ("context-dqn", {"grid": 4, "q_channels": "4,8"}),
    ],
)
def test_at_the_end_of_an_annealed_schedule_the_model_sees_clean_images(method, options):
    spec = AGENTS[method]
    task = build_task(spec.task, **spec.task_options(spec.make_options(options)))
    torch.manual_seed(0)
    model = task.build_model("resnet10t", 2, 1, small_stem=True)
    agent = spec.build(16, 1, seed=0, options=options | {"mask_schedule": "linear"})
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 0)
    o = agent.optimizer_options()
    agent_opt = make_optimizer(agent.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay) if o else None
    ctx = InputsStep(model, task.loss, opt, agent, agent_opt, device=torch.device("cpu"), total_steps=10)
    x, y = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0, 1])
    agent.train_step(ctx.begin(0, 10), x, y)  # progress 1: strength 0
    assert ctx.inputs
    for seen, target in ctx.inputs:
        clean = target if target is not None else x
        assert torch.allclose(seen[: len(clean)], clean.expand_as(seen[: len(clean)]), atol=1e-6), method
    # at full strength the same step masks something
    ctx.inputs.clear()
    agent.train_step(ctx.begin(0, 0), x, y)
    assert any(not torch.allclose(seen[: len(x)], x, atol=1e-6) for seen, _ in ctx.inputs), method


def test_plain_has_nothing_to_anneal(tmp_path, capsys):
    args = ["pretrain", "--method", "mixup", "--mask-schedule", "linear", "--data", "synthetic:n=24,size=16"]
    assert main([*args, "--out", str(tmp_path / "unused"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--mask-schedule" in err and err.count("\n") == 1
    assert not (tmp_path / "unused").exists()  # refused before the output folder is made
