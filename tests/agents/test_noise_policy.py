"""PGNM Beta noise policy and its baselines: sampling, numerics, both objectives, EMA bases, evaluation masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlmask.agents.base import AgentOptimizer
from rlmask.agents.noise import (
    EPS,
    BetaNoisePolicy,
    GaussianNoiseAgent,
    GaussianNoiseOptions,
    MaskGeometry,
    NoiseConfig,
    NoiseMaskAgent,
    RandomMaskAgent,
    beta_log_prob_and_entropy,
    reference_loss,
    reinforce_policy_loss,
    sample_beta,
    sample_cells,
)
from rlmask.errors import UserError
from rlmask.models import seeded_init

S, C, B = 16, 1, 4  # tiny images: 16 px -> grid round(64*16/224) = 5, 25 cells


def criterion(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def loss_of(model):
    """The task loss an agent's step receives: per-sample cross-entropy of ``model``."""
    return lambda x, y: criterion(model(x), y)


def tiny_classifier(seed=0):
    with seeded_init(torch.Generator().manual_seed(seed)):
        return nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, 3))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, S, S, generator=g), torch.randint(0, 3, (B,), generator=g)


def make_agent(seed=0, **options):
    return NoiseMaskAgent(NoiseConfig(**options), S, C, seed=seed)


def saturate_heads(agent, value):
    """Make every head output +-value whatever the input (last layer: zero weights, bias +-value)."""
    g = torch.Generator().manual_seed(1)
    for head in (agent.policy.head_a, agent.policy.head_b):
        last = head[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(value * (torch.randint(0, 2, last.bias.shape, generator=g) * 2 - 1))


class Recorder(nn.Module):
    """Linear classifier that remembers its last input."""

    def __init__(self):
        super().__init__()
        self.linear = tiny_classifier()

    def forward(self, x):
        self.seen_raw, self.seen = x, x.detach()
        return self.linear(x)


# --- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [(0.5, 2.0), (2.0, 0.5), (0.05, 0.05), (50.0, 50.0), (3.0, 7.0)])
def test_generator_beta_sampler_matches_beta_moments(a, b):
    n = 40_000
    s = sample_beta(torch.full((n,), a), torch.full((n,), b), torch.Generator().manual_seed(0))
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert s.min() >= 0 and s.max() <= 1
    assert abs(s.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(s.var().item() - var) < 0.05 * var


def test_sampler_is_deterministic_for_a_generator_seed():
    a = torch.full((50,), 0.7)
    draw = lambda seed: sample_beta(a, a, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


# --- numerics ---------------------------------------------------------------------------------------
def test_extreme_log_parameters_stay_finite_for_1000_steps():
    agent = make_agent()
    policy = agent.policy
    g = torch.Generator().manual_seed(0)
    extremes = torch.tensor([50.0, -50.0, 1e4, -1e4, 0.0])
    for step in range(1000):
        idx = torch.randint(0, len(extremes), (2, B, 25), generator=g)
        log_alpha = (extremes[idx[0]] + torch.randn(B, 25, generator=g)).requires_grad_()
        log_beta = (extremes[idx[1]] + torch.randn(B, 25, generator=g)).requires_grad_()
        dist = policy.distribution(log_alpha, log_beta)
        cells = sample_cells(dist, g)
        assert ((cells >= EPS) & (cells <= 1 - EPS)).all()
        log_prob, entropy = dist.log_prob(cells), dist.entropy()
        ce = torch.rand(B, generator=g) * 10
        advantage = torch.randn(B, generator=g)
        loss = reference_loss(log_prob, ce) if step % 2 else reinforce_policy_loss(log_prob, advantage, entropy, 0.01)
        loss.backward()
        for t in (log_prob, entropy, loss, log_alpha.grad, log_beta.grad):
            assert torch.isfinite(t).all(), f"step {step}"


@pytest.mark.parametrize("objective", ["reinforce", "reference"])
@pytest.mark.parametrize("value", [50.0, 1e4])
def test_saturated_policy_gives_finite_loss_and_gradients(objective, value):
    agent, model = make_agent(objective=objective), tiny_classifier()
    saturate_heads(agent, value)
    for seed in range(3):
        x, y = batch(seed)
        loss, logs = agent.training_loss(x, y, loss_of(model))
        agent.zero_grad()
        model.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in logs.values())
        for p in [*agent.parameters(), *model.parameters()]:
            assert p.grad is None or torch.isfinite(p.grad).all()


# --- the reference objective --------------------------------------------------------------------------
def test_reference_loss_equals_hand_computation():
    log_prob = [[-1.0, 0.5, 2.0], [0.0, -3.0, 1.0]]  # (B=2, cells=3)
    logits, y = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], [0, 2]
    lse = [math.log(sum(math.exp(v) for v in row)) for row in log_prob]
    ce = [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits, y)]
    expected = (sum(lse) / 2) * (sum(ce) / 2)
    got = reference_loss(torch.tensor(log_prob), criterion(torch.tensor(logits), torch.tensor(y)))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reference_step_is_the_product_and_trains_both_networks():
    agent, model = make_agent(objective="reference"), tiny_classifier()
    x, y = batch()
    loss, logs = agent.training_loss(x, y, loss_of(model))
    # the logged log-probability is the reference's mean logsumexp over cells
    torch.testing.assert_close(loss.detach(), logs["policy/log_prob"] * logs["losses/ce"])
    loss.backward()
    assert model[1].weight.grad.abs().sum() > 0
    assert agent.policy.head_a[-1].weight.grad.abs().sum() > 0


# --- the reinforce objective ----------------------------------------------------------------------------
def test_reinforce_classifier_loss_is_plain_ce_and_mask_carries_no_policy_gradient():
    agent, model = make_agent(), Recorder()
    x, y = batch()
    loss, logs = agent.training_loss(x, y, loss_of(model))
    assert not model.seen_raw.requires_grad  # x * M: the policy gets no gradient through the image
    # First batch: the baseline is the batch's own mean reward.
    torch.testing.assert_close(logs["policy/baseline"], logs["policy/reward"])
    weight = model.linear[1].weight
    got = torch.autograd.grad(loss, weight, retain_graph=True)[0]
    plain = torch.autograd.grad(criterion(model.linear(model.seen), y).mean(), weight)[0]
    torch.testing.assert_close(got, plain)  # the classifier sees plain mean CE, no policy factor
    policy_grad = torch.autograd.grad(loss, agent.policy.head_a[-1].weight)[0]
    assert torch.isfinite(policy_grad).all() and policy_grad.abs().sum() > 0


def test_baseline_is_a_running_mean_updated_after_use():
    agent, model = make_agent(baseline_momentum=0.9), tiny_classifier()
    rewards, baselines = [], []
    for seed in range(3):
        _, logs = agent.training_loss(*batch(seed), loss_of(model))
        rewards.append(logs["policy/reward"].item())
        baselines.append(logs["policy/baseline"].item())
    assert baselines[0] == pytest.approx(rewards[0])
    assert baselines[1] == pytest.approx(baselines[0])  # 0.9*r0 + 0.1*r0
    assert baselines[2] == pytest.approx(0.9 * baselines[1] + 0.1 * rewards[1], rel=1e-5)
    assert agent.baseline.item() == pytest.approx(0.9 * baselines[2] + 0.1 * rewards[2], rel=1e-5)


def test_adversarial_sign_flips_the_reward_and_the_policy_loss():
    x, y = batch()
    results = {}
    for sign in ("cooperative", "adversarial"):
        agent = make_agent(policy_sign=sign)
        _, results[sign] = agent.training_loss(x, y, loss_of(tiny_classifier()))
    coop, adv = results["cooperative"], results["adversarial"]
    torch.testing.assert_close(coop["losses/ce"], adv["losses/ce"])  # same seed: same masks
    torch.testing.assert_close(adv["policy/reward"], -coop["policy/reward"])
    torch.testing.assert_close(adv["losses/policy"], -coop["losses/policy"])


# --- the policy and its bases ------------------------------------------------------------------------
def test_ema_base_update_for_one_step_and_heads_run_once():
    agent = make_agent(base_mix=0.9, base_ema=0.99)
    policy = agent.policy
    outputs, calls = {}, {"a": 0, "b": 0}

    def hook(name):
        def record(module, inputs, out):
            calls[name] += 1
            outputs[name] = out.detach().clone()

        return record

    policy.head_a.register_forward_hook(hook("a"))
    policy.head_b.register_forward_hook(hook("b"))
    old_a, old_b = policy.base_a.clone(), policy.base_b.clone()
    x, _ = batch()
    log_alpha, log_beta = policy(x)
    torch.testing.assert_close(log_alpha, 0.9 * old_a + 0.1 * outputs["a"])
    torch.testing.assert_close(log_beta, 0.9 * old_b + 0.1 * outputs["b"])
    torch.testing.assert_close(policy.base_a, 0.99 * old_a + 0.01 * outputs["a"].mean(0, keepdim=True))
    torch.testing.assert_close(policy.base_b, 0.99 * old_b + 0.01 * outputs["b"].mean(0, keepdim=True))

    calls.update(a=0, b=0)
    agent.training_loss(*batch(), loss_of(tiny_classifier()))
    assert calls == {"a": 1, "b": 1}

    policy.eval()  # evaluation leaves the bases alone
    before = policy.base_a.clone()
    policy(x)
    assert torch.equal(policy.base_a, before)


def test_policy_input_downscaling_and_fixed_initialisation():
    a, b = make_agent(seed=5, policy_input_size=8), make_agent(seed=5, policy_input_size=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        if isinstance(pa, torch.Tensor):
            assert torch.equal(pa, pb), name  # same seed, same policy (every rank starts equal)
    assert not torch.equal(a.policy.base_a, make_agent(seed=6).policy.base_a)
    assert ((a.policy.base_a >= 0) & (a.policy.base_a < 1)).all()
    seen = []
    a.policy.features.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    log_alpha, _ = a.policy(batch()[0])
    assert seen == [(B, C, 8, 8)] and log_alpha.shape == (B, 25)


def test_masked_eval_input_uses_the_base_distribution_and_is_deterministic():
    agent = make_agent()
    x = torch.ones(3, C, S, S)
    with torch.no_grad():
        agent.policy.base_a.fill_(10.0)  # alpha -> 100, beta -> 0.01: cells ~ 1
        agent.policy.base_b.fill_(-10.0)
    assert agent.masked_eval_input(x, torch.Generator().manual_seed(0)).mean() > 0.99
    with torch.no_grad():
        agent.policy.base_a.fill_(-10.0)
        agent.policy.base_b.fill_(10.0)
    assert agent.masked_eval_input(x, torch.Generator().manual_seed(0)).mean() < 0.01

    agent = make_agent()
    out = agent.masked_eval_input(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, agent.masked_eval_input(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, agent.masked_eval_input(x, torch.Generator().manual_seed(2)))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # one mask for the whole batch
    assert torch.equal(agent.masked_eval_input(x), agent.masked_eval_input(x))  # None: the agent's seed


def test_sample_masks_shapes_and_no_base_update():
    agent = make_agent()
    agent.train()
    before = agent.policy.base_a.clone()
    sampled = agent.sample_masks(batch()[0], torch.Generator().manual_seed(0))
    cells, mask = sampled["cells"], sampled["mask"]
    assert cells.shape == (B, 25) and mask.shape == (B, 1, S, S)
    assert torch.equal(agent.policy.base_a, before) and agent.policy.training


def test_mask_stream_resumes_exactly_from_the_state_dict():
    model, (x, y) = tiny_classifier(), batch()
    first = make_agent()
    first.training_loss(x, y, loss_of(model))
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in first.state_dict().items()}
    _, expected = first.training_loss(x, y, loss_of(model))
    resumed = make_agent()
    resumed.load_state_dict(state)
    _, got = resumed.training_loss(x, y, loss_of(model))
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])


def test_config_validation_options_and_resolved_config():
    for bad in (
        dict(objective="ppo"),
        dict(objective="reference", policy_sign="adversarial"),
        dict(objective="reference", entropy_coef=0.1),
        dict(base_mix=1.5),
        dict(upsample="cubic"),
        dict(kernel=4),
        dict(min_concentration=1.0, max_concentration=0.5),
        dict(objective="reference", area_target=0.5),
        dict(area_target=1.5),
        dict(log_prob_reduction="max"),
    ):
        with pytest.raises(UserError):
            make_agent(**bad)
    agent = make_agent(policy_lr=0.02, policy_optimizer="adamw")
    assert agent.optimizer_options() == AgentOptimizer(
        lr=0.02, momentum=0.9, weight_decay=1e-4, optimizer="adamw", schedule="constant"
    )
    # each objective's defaults: the reference's published values, reinforce's measured ones (issue 17)
    assert make_agent(objective="reference").optimizer_options() == AgentOptimizer(
        lr=0.01, momentum=0.9, weight_decay=1e-4, optimizer="sgd", schedule="cosine"
    )
    assert make_agent(objective="reference").policy.base_mix == 0.9 and make_agent().policy.base_mix == 0.5
    assert make_agent().optimizer_options() == AgentOptimizer(
        lr=1e-3, momentum=0.9, weight_decay=1e-4, optimizer="adam", schedule="constant"
    )
    resolved = agent.resolved_config()
    assert resolved["method"] == "pgnm" and resolved["objective"] == "reinforce"
    assert (resolved["grid"], resolved["kernel"], resolved["sigma"]) == (5, 3, pytest.approx(6 * S / 224))


# --- baselines ----------------------------------------------------------------------------------------
def test_random_mask_agent_masks_with_uniform_cells():
    agent, model = RandomMaskAgent(MaskGeometry(), S, C, seed=0), Recorder()
    x, y = torch.ones(B, C, S, S), batch()[1]
    loss, logs = agent.training_loss(x, y, loss_of(model))
    loss.backward()
    assert model.linear[1].weight.grad.abs().sum() > 0 and agent.optimizer_options() is None
    assert model.seen.min() >= 0 and model.seen.max() <= 1 and not torch.equal(model.seen[0], model.seen[1])
    out = agent.masked_eval_input(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, agent.masked_eval_input(x, torch.Generator().manual_seed(0)))
    assert torch.equal(out[0], out[1])
    assert agent.resolved_config()["grid"] == 5


def test_gaussian_noise_agent_adds_noise_of_the_configured_std():
    agent, model = GaussianNoiseAgent(GaussianNoiseOptions(noise_std=0.5), S, C, seed=0), Recorder()
    x, y = batch()
    loss, logs = agent.training_loss(x, y, loss_of(model))
    noise = model.seen - x
    assert noise.std().item() == pytest.approx(0.5, rel=0.1)  # B*C*S*S = 1024 draws
    assert abs(noise.mean().item()) < 0.1
    torch.testing.assert_close(logs["losses/ce"], criterion(model.linear(model.seen), y).mean())
    assert (
        agent.eval_views() == {}
        and agent.sample_masks(x, None) is None
        and agent.resolved_config() == {"method": "gaussian-noise", "noise_std": 0.5}
    )


def test_log_prob_and_entropy_equal_torch_beta_with_gradients():
    g = torch.Generator().manual_seed(5)
    log_alpha = (3 * torch.randn(4, 9, generator=g)).requires_grad_()
    log_beta = (3 * torch.randn(4, 9, generator=g)).requires_grad_()
    policy = BetaNoisePolicy(grid=3, in_chans=1, image_size=16)
    cells = sample_cells(policy.distribution(log_alpha, log_beta), g)
    ours = beta_log_prob_and_entropy(policy.distribution(log_alpha, log_beta), cells)
    dist = policy.distribution(log_alpha, log_beta)
    reference = (dist.log_prob(cells), dist.entropy())
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
        grads = torch.autograd.grad(mine.sum(), (log_alpha, log_beta), retain_graph=True)
        expected = torch.autograd.grad(theirs.sum(), (log_alpha, log_beta), retain_graph=True)
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    _, entropy = beta_log_prob_and_entropy(policy.distribution(log_alpha, log_beta), cells, entropy_grad=False)
    assert not entropy.requires_grad


def test_drift_from_untrained_sees_learned_weights_not_moved_buffers():
    from rlmask.agents.noise import NoiseConfig, NoiseMaskAgent

    agent = NoiseMaskAgent(NoiseConfig(grid=4, kernel=1), 16, 1, seed=3)
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        agent.policy.base_a.add_(2.0)  # the bases drift (as the EMA makes them) ...
    drift = agent.drift_from_untrained(x)
    assert drift["moved"].shape == (8, 16) and not drift["moved"].any()  # ... which is not learning
    assert drift["kl"].abs().max() < 1e-5
    with torch.no_grad():
        agent.policy.head_a[-1].bias.add_(3.0)  # a learned change of the weights moves the means
    drift = agent.drift_from_untrained(x)
    assert drift["moved"].float().mean() > 0.5 and drift["kl"].mean() > 0.01
    assert not any(k.startswith("_untrained") for k in agent.state_dict())
