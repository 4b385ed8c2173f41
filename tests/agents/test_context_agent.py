"""Intelligent Masking's agent (``context``) and its reconstruct task: the Q-network finds the region that is
hard to inpaint, the pieces (blocks, schedule, loss, options) behave as documented, replay and target
network continue exactly."""

import copy

import pytest
import torch

from rlmask.agents import AGENTS
from rlmask.agents.occlusion import linear_schedule
from rlmask.errors import UserError
from rlmask.masks import block_mask
from rlmask.train.loop import make_optimizer
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task, fixed_block_corners, masked_squared_error

S, G = 16, 4  # 16 px images, a 4 x 4 grid of 4-px cells; the textured quadrant is cells (0..1, 0..1)


def toy_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth ramps with random slopes and offsets, and unpredictable noise in the top-left quadrant."""
    ramp = torch.linspace(-1, 1, S)
    a, b, c = (torch.rand(3, n, 1, 1, 1, generator=generator) - 0.5) * 2
    x = a * ramp[None, None, :, None] + b * ramp[None, None, None, :] + c  # (n, 1, S, S)
    x[:, :, : S // 2, : S // 2] = torch.randn(n, 1, S // 2, S // 2, generator=generator)
    return x


def make(options: dict, seed: int = 0, total_steps: int = 100, model_name: str = "context_encoder"):
    spec = AGENTS["context"]
    opts = spec.make_options(options)
    task = build_task("reconstruct", **spec.cls.task_options(opts))
    torch.manual_seed(seed)
    model = task.build_model(model_name, 2, 1, small_stem=True)
    agent = spec.build(S, 1, seed=seed, options=options)
    opt = make_optimizer(model.parameters(), "adam", 3e-3, 0.9, 0.0)
    o = agent.optimizer_options()
    agent_opt = make_optimizer(agent.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay)
    ctx = TrainStep(model, task.loss, opt, agent, agent_opt, device=torch.device("cpu"), total_steps=total_steps)
    return task, model, agent, opt, agent_opt, ctx


def test_q_network_learns_to_hide_the_region_that_is_hard_to_inpaint():
    steps = 60
    task, model, agent, _, _, ctx = make(
        {"grid": G, "block": 1, "q_channels": "8,16,16", "q_lr": 3e-3, "explore_fraction": 0.5}, total_steps=steps
    )
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        logs = agent.train_step(ctx.begin(0, step), toy_images(24, g), torch.zeros(24, dtype=torch.long))
    assert logs["policy/epsilon"] == 0  # greedy after the first half, as the reference schedule says

    x = toy_images(64, torch.Generator().manual_seed(123))
    agent.eval()
    chosen = agent.choose(x)  # (64,) greedy top-left cells
    rows, cols = chosen // G, chosen % G
    in_quadrant = ((rows < 2) & (cols < 2)).float().mean().item()
    assert in_quadrant > 0.8, in_quadrant  # chance: 4 of 16 cells = 0.25

    model.eval()
    random_cells = agent.random_actions(64, 1, torch.Generator().manual_seed(1), x.device)[:, 0]

    def block_error(cells):
        with torch.no_grad():
            x_masked, target, hidden = agent.hide(x, cells[:, None])
            return task.loss(model, x_masked, target=target, mask=hidden).mean().item()

    assert block_error(chosen) > 1.5 * block_error(random_cells)


def test_block_masks_and_actions_stay_inside_the_grid():
    hidden = block_mask(torch.tensor([[0, 0], [7, 7]]), 2, 9, (28, 28))  # (2, 1, 28, 28)
    assert hidden.shape == (2, 1, 28, 28)
    # cells of 28 px / 9: pixel p is in cell floor(9p/28); the first two cells are pixels 0..6
    assert hidden[0, 0, :7, :7].all() and hidden[0].sum() == 49
    assert hidden[1, 0, 22:, 22:].all() and hidden[1].sum() == 36  # cells 7, 8: pixels 22..27
    _, _, agent, *_ = make({"grid": 9, "block": 3, "masks_per_image": 4})
    q = torch.randn(5, 81)
    q[:, 80] = 1e3  # the best cell is not a valid top-left (the block would leave the grid)
    acts = agent.select_actions(q, 0.0, torch.Generator().manual_seed(0))  # (5, 4) greedy
    assert acts.shape == (5, 4) and (acts // 9 <= 6).all() and (acts % 9 <= 6).all()
    assert all(len(set(row.tolist())) == 4 for row in acts)  # the M best distinct blocks
    rand = agent.random_actions(1000, 1, torch.Generator().manual_seed(0), "cpu")
    assert (rand // 9).max() == 6 and (rand % 9).max() == 6 and (rand // 9).min() == 0


def test_linear_schedule_and_exploration_rules():
    assert linear_schedule(1.0, 0.05, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert linear_schedule(1.0, 0.05, 100, 500) == 0.05
    _, _, ref, *_ = make({}, total_steps=100)
    _, _, eps, *_ = make({"exploration": "epsilon", "explore_fraction": 0.5}, total_steps=100)
    _, _, rnd, *_ = make({"masking": "random"}, total_steps=100)
    ctx = TrainStep(torch.nn.Identity(), None, None, device=torch.device("cpu"), total_steps=100)
    assert [ref.exploration_rate(ctx.begin(0, s)) for s in (0, 19, 20, 99)] == [1.0, 1.0, 0.0, 0.0]
    assert eps.exploration_rate(ctx.begin(0, 25)) == pytest.approx(linear_schedule(1.0, 0.05, 50, 25))
    assert rnd.exploration_rate(ctx.begin(0, 99)) == 1.0


def test_reconstruction_loss_is_the_hidden_error_over_the_hidden_area():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    target[1] = 2.0
    hidden = torch.zeros(2, 1, 4, 4)
    hidden[:, :, :2, :2] = 1
    pred[0, :, 2:, 2:] = 100.0  # outside the hidden block: not counted
    assert torch.allclose(masked_squared_error(pred, target, hidden), torch.tensor([1.0, 4.0]))
    # the validation blocks depend on the seed and the split length only
    assert torch.equal(fixed_block_corners(10, 9, 3, 0), fixed_block_corners(10, 9, 3, 0))
    assert fixed_block_corners(1000, 9, 3, 0).max() == 6


@pytest.mark.parametrize("model_name", ["context_encoder", "resnet10t"])
def test_reconstructor_output_and_exported_encoder(model_name, tmp_path):
    task, model, *_ = make({}, model_name=model_name)
    x = torch.randn(2, 1, S, S)
    assert model(x).shape == (2, 1, S, S)
    task.export(model, tmp_path)
    state = torch.load(tmp_path / "heated.pt")
    assert state.keys() == model.encoder.state_dict().keys() and not any(k.startswith("fc.") for k in state)


@pytest.mark.parametrize(
    "bad, flag",
    [
        ({"masking": "smart"}, "--masking smart"),
        ({"block": 12}, "--block 12"),
        ({"q_channels": "8,x"}, "--q-channels 8,x"),
        ({"masks_per_image": 0}, "--masks-per-image 0"),
        ({"scaling": "unit"}, "--scaling unit"),
    ],
)
def test_bad_options_name_the_option(bad, flag):
    with pytest.raises(UserError, match=f"^{flag}"):
        AGENTS["context"].make_options(bad)


def test_replay_buffer_and_target_network_continue_exactly():
    options = {
        "grid": G,
        "block": 1,
        "q_channels": "8,8",
        "replay_size": 40,
        "replay_batch": 8,
        "target_update": 2,
        "masks_per_image": 2,
        "exploration": "epsilon",
    }
    g = torch.Generator().manual_seed(0)
    batches = [toy_images(8, g) for _ in range(4)]
    y = torch.zeros(8, dtype=torch.long)
    _, model, agent, opt, agent_opt, ctx = make(options)
    for s in range(2):
        agent.train_step(ctx.begin(0, s), batches[s], y)
    saved = [copy.deepcopy(o.state_dict()) for o in (model, agent, opt, agent_opt)]
    expected = [agent.train_step(ctx.begin(0, s), batches[s], y) for s in (2, 3)]
    assert int(agent.replay_count) == 4 * 8 * 2

    _, model2, agent2, opt2, agent_opt2, ctx2 = make(options, seed=1)
    for obj, state in zip((model2, agent2, opt2, agent_opt2), saved):
        obj.load_state_dict(state)
    got = [agent2.train_step(ctx2.begin(0, s), batches[s], y) for s in (2, 3)]
    for e, o in zip(expected, got):
        assert all(torch.equal(e[k], o[k]) for k in e)
    for key, value in agent.state_dict().items():
        if isinstance(value, torch.Tensor):  # the generator's state is extra state (a dict)
            assert torch.equal(value, agent2.state_dict()[key]), key
