"""The agent contract, checked for every registered method (generated from the registry, like timm's model
tests): one step on the CPU, finite logs, masks in range, state-dict round trip, exact continuation."""

import copy

import pytest
import torch

from rlmask.agents import AGENTS
from rlmask.train.loop import make_agent_optimizer, make_optimizer
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task

S, C, B, K = 16, 1, 4, 3
PLAIN_DIR = None  # set by the autouse fixture below


@pytest.fixture(autouse=True, scope="module")
def _plain_dir(tmp_path_factory):
    global PLAIN_DIR
    PLAIN_DIR = tmp_path_factory.mktemp("plain")


def plain_checkpoint(path) -> str:
    """An rlmask checkpoint of a plain resnet10t for the data of these tests (agents that need a plain model)."""
    if not path.is_file():
        model = build_task("classify").build_model("resnet10t", K, C, small_stem=True)
        torch.save(
            {
                "kind": "rlmask",
                "model": model.state_dict(),
                "data": {"channels": C, "classes": None},
                "model_info": {"name": "resnet10t", "num_classes": K, "small_stem": True},
            },
            path,
        )
    return str(path)


def setup(name: str, seed: int = 0):
    spec = AGENTS[name]
    task = build_task(spec.task)
    options = None
    if spec.plain_checkpoint_option:  # e.g. gradcam-mask: the plain model its masks come from
        options = {spec.plain_checkpoint_option: plain_checkpoint(PLAIN_DIR / "plain.pt")}
    torch.manual_seed(seed)
    model = task.build_model("resnet10t", K, C, small_stem=True)
    agent = spec.build(S, C, seed=seed, options=options)
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 1e-4)
    agent_opt = make_agent_optimizer(agent)
    ctx = TrainStep(model, task.loss, opt, agent, agent_opt, device=torch.device("cpu"), total_steps=10)
    return model, agent, opt, agent_opt, ctx


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, S, S, generator=g), torch.randint(0, K, (B,), generator=g)


@pytest.fixture(params=sorted(AGENTS))
def name(request):
    return request.param


def test_one_step_gives_finite_logs_and_updates_the_model(name):
    model, agent, _, agent_opt, ctx = setup(name)
    before = copy.deepcopy(model.state_dict())
    logs = agent.train_step(ctx.begin(0, 0), *batch())
    assert logs and all(isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v) for v in logs.values())
    assert not any(v.requires_grad for v in logs.values())
    assert ctx.updates >= 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_masks_are_in_range(name):
    _, agent, *_ = setup(name)
    agent.eval()
    sampled = agent.sample_masks(batch()[0], torch.Generator().manual_seed(0))
    if sampled is None:
        return
    mask = sampled["mask"]
    assert mask.shape == (B, 1, S, S) and mask.min() >= 0 and mask.max() <= 1
    for view in agent.eval_views().values():
        out = view.fn(batch()[0], torch.Generator().manual_seed(0))
        for x in out if isinstance(out, (list, tuple)) else [out]:
            assert x.shape == (B, C, S, S) and torch.isfinite(x).all()


def test_state_dict_round_trip_and_exact_continuation(name):
    """Two steps in a row equal one step, a save, a load into fresh objects and the second step."""
    model, agent, opt, agent_opt, ctx = setup(name)
    agent.train_step(ctx.begin(0, 0), *batch(0))
    saved = [copy.deepcopy(x.state_dict()) for x in (model, agent, opt, *([agent_opt] if agent_opt else []))]
    expected = agent.train_step(ctx.begin(0, 1), *batch(1))

    model2, agent2, opt2, agent_opt2, ctx2 = setup(name, seed=1)  # other initial state, overwritten
    for obj, state in zip((model2, agent2, opt2, *([agent_opt2] if agent_opt2 else [])), saved):
        obj.load_state_dict(state)
    got = agent2.train_step(ctx2.begin(0, 1), *batch(1))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key


def test_every_method_has_its_options_documented(name):
    spec = AGENTS[name]
    options = spec.make_options()
    if spec.options is None:
        assert options is None
        return
    for field in spec.options.__dataclass_fields__.values():
        assert field.metadata.get("help"), f"{name}: option {field.name} has no help text"
