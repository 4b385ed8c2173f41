"""PGNM: a policy-gradient-driven Beta noise mask (Yavuz & Yang, ICPR 2024), and its two baselines.

A light policy (resnet10t features + two heads) looks at each training image and outputs, per cell
of a G x G grid, the log-parameters of a Beta distribution. A mask is sampled from it, upsampled,
blurred and multiplied into the image; the classifier trains on the masked image and its loss is
the policy's (negative) reward. See METHODS.md section 1 for the reference step and what is odd in it.

Two objectives, one option:
- ``reference``: the published step, ``loss = mean_B(logsumexp_cells(log_prob)) * ce_mean``.
- ``reinforce`` (default): the classifier minimises the mean CE on masked images; the policy follows
  REINFORCE with per-sample rewards, a running-mean baseline and an optional entropy bonus.

Baselines: ``RandomMaskAgent`` (Beta(1,1) cells rendered with the same ``MaskGeometry``, no policy) and
``GaussianNoiseAgent`` (additive Gaussian noise). Every draw comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta

from rlmask import runtime
from rlmask.agents.base import AgentCommon, AgentOptimizer, EvalView, MaskAgent, soften
from rlmask.agents.registry import register_agent, register_preset
from rlmask.config import option
from rlmask.errors import UserError
from rlmask.masks import apply_mask, render_mask, scaled_mask_geometry
from rlmask.models import create_model, seeded_init

EPS = 1e-6  # sampled cells are clamped to [EPS, 1-EPS]: a float32 Beta draw can round to exactly 0 or 1
MOVED = 0.1  # a cell's Beta mean "moved" when it is this far from its initial mean
BARELY_MOVED = 0.01  # a run whose final moved fraction is below this says "policy barely moved"


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
def _check_choices(options, names: tuple[str, ...]) -> None:
    """UserError naming the first option of ``names`` whose value is not one of its field's choices."""
    for name in names:
        choices = type(options).__dataclass_fields__[name].metadata["choices"]
        if getattr(options, name) not in choices:
            raise UserError(f"--{name.replace('_', '-')} {getattr(options, name)}: choose from {', '.join(choices)}")


@dataclass
class MaskGeometry(AgentCommon):
    """Options of the smooth grid masks shared by PGNM and the random-mask ablation."""

    grid: int | None = option(None, "mask grid side G (None: round(64*S/224), at least 4)")
    kernel: int | None = option(None, "odd Gaussian blur kernel size (None: nearest odd to 13*S/224, at least 3)")
    sigma: float | None = option(None, "Gaussian blur sigma in pixels (None: 6*S/224)")
    upsample: str = option("nearest", "grid-to-image upsampling", choices=["nearest", "bilinear"])

    def validate(self) -> None:
        """Raise ``UserError`` naming the first option that is out of range."""
        _check_choices(self, ("upsample",))


# Options shared by both objectives whose default depends on the objective: the reference's published
# values under 'reference' (pgnm-reference never changes), values measured to make the policy learn under
# 'reinforce' (README, "Defaults that learn"; tests/agents/test_pgnm_learns.py).
OBJECTIVE_DEFAULTS = {
    "reference": {"base_mix": 0.9, "policy_lr": 0.01, "policy_optimizer": "sgd", "policy_schedule": "cosine"},
    "reinforce": {"base_mix": 0.5, "policy_lr": 1e-3, "policy_optimizer": "adam", "policy_schedule": "constant"},
}


@dataclass
class NoiseConfig(MaskGeometry):
    """Options of the PGNM agent. ``None`` in an option of ``OBJECTIVE_DEFAULTS``: the objective's default."""

    base_mix: float | None = option(
        None,
        "weight of the running base in the log-parameters: "
        "base_mix*base + (1-base_mix)*head (None: 0.9 reference, 0.5 reinforce)",
    )
    base_ema: float = option(0.99, "EMA decay of the base log-parameters toward the batch mean of the heads")
    policy_input_size: int | None = option(None, "side the policy sees its input at (None: full resolution)")
    objective: str = option(
        "reinforce",
        "policy objective: 'reinforce' (per-sample rewards, baseline) or "
        "'reference' (the published logsumexp * CE product)",
        choices=["reinforce", "reference"],
    )
    # METHODS.md gives the corrected objective the reward r_i = -CE_i: the policy is rewarded for masks
    # the classifier still gets right, i.e. it cooperates, as the reference does. 'adversarial' (r_i = +CE_i)
    # is offered, not the default: without a constraint (--area-target) its optimum is the all-zero mask.
    policy_sign: str = option(
        "cooperative",
        "reward sign: 'cooperative' (r = -CE) or 'adversarial' (r = +CE; reinforce only)",
        choices=["cooperative", "adversarial"],
    )
    entropy_coef: float = option(0.0, "weight of the mean per-cell Beta entropy bonus (reinforce only)")
    baseline_momentum: float = option(0.9, "momentum of the running-mean reward baseline (reinforce only)")
    # A sum over G*G cells makes the policy's step grow with the grid (81 to 4,096 terms at our sizes) and
    # its gradient noise with it; the per-cell mean keeps one scale at every grid (reinforce only).
    log_prob_reduction: str = option(
        "mean",
        "how a mask's per-cell log-probabilities enter REINFORCE: 'mean' "
        "(per-cell, grid-independent scale) or 'sum' (the joint log-probability)",
        choices=["mean", "sum"],
    )
    advantage_norm: bool = option(True, "divide the advantages by the batch std of the rewards (reinforce only)")
    area_target: float | None = option(
        None,
        "target mean keep fraction of a mask: adds area_coef * "
        "(mean cell mean - target)^2 per sample to the policy loss (reinforce only)",
    )
    area_coef: float = option(10.0, "weight of the area penalty (with --area-target)")
    min_concentration: float = option(1e-2, "lower clamp of the Beta concentrations exp(log-params)")
    max_concentration: float = option(1e2, "upper clamp of the Beta concentrations exp(log-params)")
    policy_lr: float | None = option(
        None, "policy learning rate (None: 0.01 reference, the classifier's lr / 10 there; 1e-3 reinforce)"
    )
    policy_momentum: float = option(0.9, "policy SGD momentum")
    policy_weight_decay: float = option(1e-4, "policy weight decay")
    policy_optimizer: str | None = option(
        None, "policy optimiser (None: sgd reference, adam reinforce)", choices=["sgd", "adamw", "adam"]
    )
    policy_schedule: str | None = option(
        None,
        "policy learning-rate schedule (None: cosine reference, constant reinforce)",
        choices=["cosine", "step", "constant"],
    )

    def resolved(self) -> NoiseConfig:
        """A copy with every ``None`` of ``OBJECTIVE_DEFAULTS`` replaced by the objective's value."""
        defaults = OBJECTIVE_DEFAULTS.get(self.objective, OBJECTIVE_DEFAULTS["reinforce"])
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def validate(self) -> None:
        """Raise ``UserError`` naming the first option that is out of range."""
        _check_choices(self, ("upsample", "objective"))
        c = self.resolved()
        _check_choices(c, ("policy_sign", "policy_optimizer", "policy_schedule", "log_prob_reduction"))
        reinforce_only = c.objective == "reinforce"
        checks = [
            ("base_mix", 0 <= c.base_mix <= 1, "must be in [0, 1]"),
            ("base_ema", 0 <= c.base_ema < 1, "must be in [0, 1)"),
            ("baseline_momentum", 0 <= c.baseline_momentum < 1, "must be in [0, 1)"),
            ("entropy_coef", c.entropy_coef >= 0, "must be >= 0"),
            ("min_concentration", c.min_concentration > 0, "must be > 0"),
            ("max_concentration", c.max_concentration > c.min_concentration, "must exceed min_concentration"),
            ("policy_input_size", c.policy_input_size is None or c.policy_input_size >= 8, "must be >= 8"),
            ("policy_lr", c.policy_lr > 0, "must be > 0"),
            ("area_target", c.area_target is None or 0 <= c.area_target <= 1, "must be in [0, 1]"),
            ("area_coef", c.area_coef >= 0, "must be >= 0"),
            (
                "policy_sign",
                reinforce_only or c.policy_sign == "cooperative",
                "the reference objective is cooperative only",
            ),
            ("entropy_coef", reinforce_only or c.entropy_coef == 0, "applies to objective 'reinforce' only"),
            ("area_target", reinforce_only or c.area_target is None, "applies to objective 'reinforce' only"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(c, name)}: {what}")


# ---------------------------------------------------------------------------------------------
# Sampling a Beta from an explicit generator
# ---------------------------------------------------------------------------------------------
# torch.distributions.Beta.sample draws from the global RNG (torch._standard_gamma takes no generator),
# so rlmask samples the two Gamma variates itself: Marsaglia-Tsang for shape a+1, boosted to shape a by
# U^(1/a), all in log space so that tiny concentrations (X ~ 1e-300) neither underflow nor divide 0/0.
GPU_PASSES = 8  # rejection passes on accelerators: a fixed count avoids a host sync per step


def _log_standard_gamma(conc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """log of Gamma(conc, 1) samples, drawn from ``generator`` (on its device); same shape as ``conc``.

    Each pass accepts > 95% of the draws it makes. On the CPU, later passes redraw only the rejected
    entries until all are accepted; on accelerators every pass redraws the whole tensor, GPU_PASSES
    times, without asking the host (a draw still rejected then, probability < 1e-10, keeps its last
    proposal).
    """
    d = conc + 2.0 / 3.0  # Marsaglia-Tsang's d = shape - 1/3 with shape = conc + 1
    c = 1.0 / torch.sqrt(9.0 * d)

    def propose(d: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log of the proposal, accepted?) for one draw per entry of d."""
        z = torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype)
        u = 1.0 - torch.rand(d.shape, generator=generator, device=d.device, dtype=d.dtype)  # (0, 1]
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        return torch.log(d * v.clamp_min(1e-30)), ok

    if conc.device.type == "cpu":
        log_g, ok = propose(d, c)
        todo = (~ok).flatten().nonzero().squeeze(1)  # flat indices still rejected
        flat_g, flat_d, flat_c = log_g.view(-1), d.reshape(-1), c.reshape(-1)
        while todo.numel():
            proposal, ok = propose(flat_d[todo], flat_c[todo])
            flat_g[todo[ok]] = proposal[ok]
            todo = todo[~ok]
    else:
        log_g = torch.zeros_like(conc)
        todo = torch.ones_like(conc, dtype=torch.bool)
        for passes in range(1, GPU_PASSES + 1):
            proposal, ok = propose(d, c)
            log_g = torch.where(todo & (ok | (passes == GPU_PASSES)), proposal, log_g)
            todo = todo & ~ok
    u = 1.0 - torch.rand(conc.shape, generator=generator, device=conc.device, dtype=conc.dtype)
    return log_g + torch.log(u) / conc  # Gamma(a) = Gamma(a+1) * U^(1/a)


def sample_beta(alpha: torch.Tensor, beta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, beta) samples drawn only from ``generator``, on the generator's device.

    X ~ Gamma(alpha), Y ~ Gamma(beta): X / (X + Y) = sigmoid(log X - log Y).
    """
    alpha = alpha.detach().float().to(generator.device)
    beta = beta.detach().float().to(generator.device)
    return torch.sigmoid(_log_standard_gamma(alpha, generator) - _log_standard_gamma(beta, generator))


def sample_cells(dist: Beta, generator: torch.Generator) -> torch.Tensor:
    """Mask cells from ``dist`` clamped to [EPS, 1-EPS] (so ``dist.log_prob`` stays finite); no gradient."""
    return sample_beta(dist.concentration1, dist.concentration0, generator).clamp(EPS, 1 - EPS)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------
def _head(width: int, cells: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
        nn.Linear(width, cells),
    )


class BetaNoisePolicy(nn.Module):
    """pi(x): per-cell Beta log-parameters from resnet10t features, mixed with running bases.

    grid: G; image_size: side of the images it receives; input_size: side it looks at them
    (None: ``image_size``; smaller values downscale first, cheaper). The initial weights and bases
    are drawn from ``seed`` so every process starts from the same policy.
    """

    def __init__(
        self,
        grid: int,
        in_chans: int,
        image_size: int,
        input_size: int | None = None,
        base_mix: float = 0.9,
        base_ema: float = 0.99,
        min_concentration: float = 1e-2,
        max_concentration: float = 1e2,
        seed: int = 0,
    ):
        super().__init__()
        self.grid, self.input_size = grid, input_size
        self.base_mix, self.base_ema = base_mix, base_ema
        self.log_min, self.log_max = math.log(min_concentration), math.log(max_concentration)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("base_a", torch.rand(1, grid * grid, generator=g))  # (1, G*G)
        self.register_buffer("base_b", torch.rand(1, grid * grid, generator=g))  # (1, G*G)
        # The standard stride-4 stem at every size, as the reference's timm resnet10t: the policy only
        # has to inform G*G cells, and a stride-1 stem would make it as costly as the classifier.
        self.features = create_model("resnet10t", num_classes=0, in_chans=in_chans, small_stem=False, generator=g)
        width = self.features.num_features
        with seeded_init(g):
            self.head_a = _head(width, grid * grid)
            self.head_b = _head(width, grid * grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (log_alpha, log_beta), each (B, G*G); in training mode also moves the bases."""
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        h = self.features(x)  # (B, 512)
        a, b = self.head_a(h), self.head_b(h)  # (B, G*G) each: the heads run once per step
        log_alpha = self.base_mix * self.base_a + (1 - self.base_mix) * a  # (B, G*G)
        log_beta = self.base_mix * self.base_b + (1 - self.base_mix) * b
        if self.training:
            with torch.no_grad():  # EMA of the batch-mean head outputs, after they were used
                self.base_a.mul_(self.base_ema).add_((1 - self.base_ema) * a.mean(0, keepdim=True))
                self.base_b.mul_(self.base_ema).add_((1 - self.base_ema) * b.mean(0, keepdim=True))
            self.sync_bases()
        return log_alpha, log_beta

    def sync_bases(self) -> None:
        """Average the bases across processes (the reference leaves them per-process and drifting apart)."""
        for base in (self.base_a, self.base_b):
            runtime.all_reduce_mean_(base)

    def distribution(self, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> Beta:
        """Beta(exp(log_alpha), exp(log_beta)) with concentrations clamped to [min, max], in float32.

        The clamp acts on the log-parameters, before exp: exp(1e4) = inf would make the clamp's
        zero gradient times inf a NaN.
        """
        alpha = log_alpha.float().clamp(self.log_min, self.log_max).exp()
        beta = log_beta.float().clamp(self.log_min, self.log_max).exp()
        return Beta(alpha, beta)


def beta_log_prob_and_entropy(
    dist: Beta, x: torch.Tensor, entropy_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell log-density of ``x`` under ``dist`` and the per-cell entropy, sharing log B(a, b).

    Equal to ``dist.log_prob(x)`` and ``dist.entropy()`` without their Dirichlet detour (stacked copies,
    the entropy's digamma and polygamma passes); ``entropy_grad=False`` leaves the entropy out of the
    graph, for when only its value is logged.
    """
    a, b = dist.concentration1, dist.concentration0
    log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)  # log B(a, b)
    log_prob = (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - log_beta_fn
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = (
            log_beta_fn - (a - 1) * torch.digamma(a) - (b - 1) * torch.digamma(b) + (a + b - 2) * torch.digamma(a + b)
        )
    return log_prob, entropy


# ---------------------------------------------------------------------------------------------
# The two objectives, as pure functions of per-cell log-probabilities
# ---------------------------------------------------------------------------------------------
def reference_loss(log_prob: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """The published loss: mean_B(logsumexp over cells of log_prob) * mean_B(ce).

    log_prob (B, G*G), ce (B,). One backward trains both networks; the classifier's gradient is
    scaled by the (data-dependent, possibly negative) logsumexp factor.
    """
    return torch.logsumexp(log_prob, dim=1).mean() * ce.mean()


def reinforce_policy_loss(
    log_prob: torch.Tensor,
    advantage: torch.Tensor,
    entropy: torch.Tensor,
    entropy_coef: float,
    reduction: str = "sum",
) -> torch.Tensor:
    """REINFORCE with a baseline: -mean_i(advantage_i * R_cells log_prob_i) - entropy_coef * mean entropy.

    log_prob (B, G*G), advantage (B,) detached, entropy (B, G*G). R is ``reduction``: ``"sum"`` gives the
    joint log-probability of a mask (the textbook estimator), ``"mean"`` the same direction at 1/(G*G) the
    scale, so that one learning rate fits every grid.
    """
    per_mask = log_prob.sum(dim=1) if reduction == "sum" else log_prob.mean(dim=1)  # (B,)
    loss = -(advantage * per_mask).mean()
    return loss - entropy_coef * entropy.mean() if entropy_coef else loss


def normalised_advantage(reward: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """(reward - baseline) / batch std of the rewards, (B,): a unit-scale step whatever the scale of the CE.

    A batch of one has no spread to divide by and is returned unscaled (a static shape: no host sync).
    """
    advantage = reward - baseline
    if reward.numel() < 2:
        return advantage
    return advantage / reward.std().clamp_min(1e-6)


def beta_kl(a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """KL(Beta(a, b) || Beta(a0, b0)), elementwise (broadcast)."""
    ln_b = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    ln_b0 = torch.lgamma(a0) + torch.lgamma(b0) - torch.lgamma(a0 + b0)
    return (
        ln_b0
        - ln_b
        + (a - a0) * torch.digamma(a)
        + (b - b0) * torch.digamma(b)
        + (a0 - a + b0 - b) * torch.digamma(a + b)
    )


def _std(v: torch.Tensor) -> torch.Tensor:
    """Std of a 1-D tensor, 0 for a single value (not NaN, which would poison the epoch's mean)."""
    return v.std() if v.numel() > 1 else torch.zeros_like(v.sum())


def _grad_norm(params, device) -> torch.Tensor:
    """L2 norm of the gradients of ``params`` (0 when none has one), a scalar tensor on ``device``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


# ---------------------------------------------------------------------------------------------
# Agents
# ---------------------------------------------------------------------------------------------
class _SeededAgent(MaskAgent):
    """An agent owning its mask-sampling generator, kept in its state dict for an exact resume."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed
        self._rng: torch.Generator | None = None
        self._rng_saved: dict | None = None  # from a checkpoint, applied when the generator is made

    def rng(self, device: torch.device | str) -> torch.Generator:
        """This process's generator on ``device``, seeded from (seed, rank) so ranks draw different masks."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._rng is None or self._rng.device != device:
            self._rng = torch.Generator(device=device)
            self._rng.manual_seed(runtime.rank_seed(self.seed))
            saved = self._rng_saved
            if saved is not None and saved["device"] == str(device):
                self._rng.set_state(saved["state"])
                if saved["rank"] != runtime.rank():  # only rank 0 saves: fork its stream rather than share it
                    draw = torch.randint(2**62, (1,), generator=self._rng, device=device)
                    self._rng.manual_seed(int(draw) + runtime.rank())
        return self._rng

    def get_extra_state(self) -> dict | None:
        if self._rng is None:
            return self._rng_saved
        return {"device": str(self._rng.device), "rank": runtime.rank(), "state": self._rng.get_state()}

    def set_extra_state(self, state: dict | None) -> None:
        self._rng, self._rng_saved = None, state


@register_agent("pgnm", options=NoiseConfig)
class NoiseMaskAgent(_SeededAgent):
    """PGNM: a Beta noise-mask policy trained by policy gradient next to the classifier."""

    def __init__(self, cfg: NoiseConfig, image_size: int, in_chans: int, seed: int = 0):
        super().__init__(seed)
        cfg.validate()
        self.cfg = cfg = cfg.resolved()  # the objective's defaults filled in
        self.geometry = scaled_mask_geometry(image_size, cfg.grid, cfg.kernel, cfg.sigma)
        # the seed fixes the initial weights: a second call rebuilds the untrained policy (drift_from_untrained)
        self._new_policy = functools.partial(
            BetaNoisePolicy,
            self.geometry["grid"],
            in_chans,
            image_size,
            cfg.policy_input_size,
            cfg.base_mix,
            cfg.base_ema,
            cfg.min_concentration,
            cfg.max_concentration,
            seed=seed,
        )
        self.policy = self._new_policy()
        self._untrained: list[BetaNoisePolicy] = []  # built when first needed; a list keeps it out of the state
        self.register_buffer("baseline", torch.zeros(()))  # running mean of the rewards
        self.register_buffer("baseline_steps", torch.zeros((), dtype=torch.long))
        # The distribution the policy starts from, Beta(exp(base_a), exp(base_b)) at construction, for the
        # diagnostics (KL from it, cells moved); saved, so a policy loaded into another agent keeps its origin.
        self.register_buffer("initial_base_a", self.policy.base_a.clone())  # (1, G*G)
        self.register_buffer("initial_base_b", self.policy.base_b.clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the diagnostics lack the initial bases: they were drawn from the seed,
        # so this agent's own (same seed) values stand in, and such checkpoints keep loading strictly.
        for name in ("initial_base_a", "initial_base_b"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def render(self, cells: torch.Tensor, size) -> torch.Tensor:
        """Cells (B, G*G) -> smooth mask (B, 1, H, W)."""
        return render_mask(
            cells, tuple(size), kernel=self.geometry["kernel"], sigma=self.geometry["sigma"], upsample=self.cfg.upsample
        )

    def train_step(self, ctx, x, y):
        """The one update of :class:`MaskAgent`, then the gradient norms of both networks, read from .grad.

        ``ctx.update`` leaves the gradients in place until the next update zeroes them, so the norms cost
        one fused norm per network and no second backward. The classifier's is the norm after clipping.
        """
        self.strength = self.mask_strength(ctx)
        with ctx.autocast():
            loss, logs = self.training_loss(x, y, ctx.loss)
        ctx.update(loss)
        logs["policy/grad_norm"] = _grad_norm(self.policy.parameters(), x.device)
        logs["policy/classifier_grad_norm"] = _grad_norm(ctx.model.parameters(), x.device)
        return logs

    def training_loss(self, x, y, loss_fn):
        """One PGNM step on x (B, C, H, W): sample masks, classify masked images, build the objective's loss."""
        cfg = self.cfg
        log_alpha, log_beta = self.policy(x)  # (B, G*G) each
        dist = self.policy.distribution(log_alpha, log_beta)
        cells = sample_cells(dist, self.rng(x.device))  # (B, G*G), sampled: no gradient reaches the mask
        mask = self.render(cells, x.shape[-2:])  # (B, 1, H, W)
        ce = loss_fn(apply_mask(x, soften(mask, self.strength)), y).float()  # (B,) at this step's strength
        # (B, G*G) each; the entropy needs a gradient only when it is part of the objective
        log_prob, entropy = beta_log_prob_and_entropy(dist, cells, entropy_grad=cfg.entropy_coef > 0)
        sign = -1.0 if cfg.policy_sign == "cooperative" else 1.0
        reward = sign * ce.detach()  # (B,)
        cell_mean = dist.mean  # (B, G*G) expected keep per cell, differentiable

        if cfg.objective == "reference":
            loss = policy_loss = reference_loss(log_prob, ce)
            baseline = torch.zeros_like(reward[0])
            advantage = reward  # no baseline: every sample's weight is the batch's shared CE
            log_prob_used = torch.logsumexp(log_prob, dim=1).mean()  # the reference's "log-probability"
        else:
            baseline = torch.where(self.baseline_steps > 0, self.baseline, reward.mean())
            advantage = normalised_advantage(reward, baseline) if cfg.advantage_norm else reward - baseline  # (B,)
            policy_loss = reinforce_policy_loss(log_prob, advantage, entropy, cfg.entropy_coef, cfg.log_prob_reduction)
            if cfg.area_target is not None:  # keeps an adversarial policy off the all-zero mask
                area = cfg.area_coef * ((cell_mean.mean(1) - cfg.area_target) ** 2).mean()
                policy_loss = policy_loss + area
            loss = ce.mean() + policy_loss
            with torch.no_grad():  # updated after use, so a sample's own reward is not in its baseline
                m = cfg.baseline_momentum
                self.baseline.copy_(m * baseline + (1 - m) * reward.mean())
                self.baseline_steps.add_(1)
            log_prob_used = log_prob.sum(dim=1).mean()  # joint log-probability of a mask

        logs = {
            "losses/ce": ce.mean(),
            "losses/policy": policy_loss,
            "policy/mask_mean": cells.mean(),
            "policy/mask_entropy": entropy.mean(),
            "policy/reward": reward.mean(),
            "policy/baseline": baseline,
            "policy/log_prob": log_prob_used,
            **self._drift_logs(dist, cells, advantage),
        }
        return loss, {k: v.detach() for k, v in logs.items()}

    @torch.no_grad()
    def _drift_logs(self, dist: Beta, cells: torch.Tensor, advantage: torch.Tensor) -> dict[str, torch.Tensor]:
        """How far the policy is from where it started, as scalar tensors (no host sync).

        ``kl_from_initial``: per-cell KL(learned Beta || initial Beta) averaged over samples and cells;
        ``moved_fraction``: share of (sample, cell) pairs whose Beta mean is > 0.1 from the initial mean.
        """
        initial = self.policy.distribution(self.initial_base_a, self.initial_base_b)
        a0, b0 = initial.concentration1, initial.concentration0  # (1, G*G)
        a, b = dist.concentration1, dist.concentration0  # (B, G*G)
        per_sample = cells.mean(1)  # (B,) each mask's mean keep
        return {
            "policy/advantage_mean": advantage.mean(),
            "policy/advantage_std": _std(advantage),
            "policy/mask_sample_std": _std(per_sample),
            "policy/kl_from_initial": beta_kl(a, b, a0, b0).mean(),
            "policy/moved_fraction": ((a / (a + b) - a0 / (a0 + b0)).abs() > MOVED).float().mean(),
        }

    @torch.no_grad()
    def eval_distribution(self, x: torch.Tensor) -> Beta:
        """The per-cell Beta the policy gives x (B, C, H, W) in eval mode: the bases are left as they are."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            return self.policy.distribution(*self.policy(x))
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def drift_from_untrained(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What learning changed in the policy's output for x (B, C, H, W), in eval mode.

        The reference is the untrained policy (the seed's initial weights, rebuilt) run with the *current*
        buffers (bases, batch-norm statistics): a policy whose weights never learn gives exactly it, whereas
        the buffers alone drift even then (the bases toward the heads' mean output), so "moved since the
        start" reports a policy that learned nothing as moving. Per (sample, cell), (B, G*G) each: ``moved``
        (Beta means more than 0.1 apart) and ``kl`` (KL of the learned Beta from the untrained one).
        """
        if not self._untrained:
            self._untrained.append(self._new_policy().eval())
        untrained = self._untrained[0].to(x.device)
        learned_policy = getattr(self.policy, "_orig_mod", self.policy)  # the module itself when compiled
        for mine, now in zip(untrained.buffers(), learned_policy.buffers()):
            mine.copy_(now)  # the bases and batch-norm statistics as they are now; only the weights are initial
        learned = self.eval_distribution(x)
        start = untrained.distribution(*untrained(x))
        return {
            "moved": (learned.mean - start.mean).abs() > MOVED,
            "kl": beta_kl(learned.concentration1, learned.concentration0, start.concentration1, start.concentration0),
        }

    @torch.no_grad()
    def cell_means(self, x: torch.Tensor) -> torch.Tensor:
        """The expected keep per cell, (B, G*G), that the policy gives x in eval mode (bases untouched)."""
        return self.eval_distribution(x).mean

    @torch.no_grad()
    def masked_eval_input(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x under one input-independent mask from Beta(exp(base_a), exp(base_b)), shared by the batch.

        Drawn from ``generator`` (None: a CPU generator seeded with the agent's seed, so the same mask
        every call).
        """
        generator = generator or torch.Generator().manual_seed(self.seed)
        dist = self.policy.distribution(self.policy.base_a, self.policy.base_b)  # (1, G*G)
        cells = sample_cells(dist, generator).to(x.device)  # (1, G*G)
        return apply_mask(x, self.render(cells, x.shape[-2:]))

    def eval_views(self) -> dict[str, EvalView]:
        return {"masked": EvalView(self.masked_eval_input)}

    @torch.no_grad()
    def sample_masks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"cells": (B, G*G), "mask": (B, 1, H, W)} the policy gives x, in eval mode (bases untouched).

        Drawn from ``generator`` (None: a CPU generator seeded with the agent's seed; the training
        stream is left alone).
        """
        dist = self.eval_distribution(x)
        cells = sample_cells(dist, generator or torch.Generator().manual_seed(self.seed)).to(x.device)
        return {"cells": cells, "mask": self.render(cells, x.shape[-2:])}

    def optimizer_options(self) -> AgentOptimizer:
        c = self.cfg
        return AgentOptimizer(
            lr=c.policy_lr,
            momentum=c.policy_momentum,
            weight_decay=c.policy_weight_decay,
            optimizer=c.policy_optimizer,
            schedule=c.policy_schedule,
        )

    def resolved_config(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self.cfg), **self.geometry}


# The two objectives as named methods, both part of the default comparison.
register_preset("pgnm-reinforce", "pgnm", in_default_comparison=True, objective="reinforce")
register_preset("pgnm-reference", "pgnm", in_default_comparison=True, objective="reference")


@register_agent("random-mask", options=MaskGeometry, in_default_comparison=True)
class RandomMaskAgent(_SeededAgent):
    """Ablation: Beta(1,1) (uniform) cells rendered like PGNM's masks, no policy."""

    def __init__(self, cfg: MaskGeometry, image_size: int, in_chans: int, seed: int = 0):
        super().__init__(seed)
        cfg.validate()
        self.cfg = cfg
        self.geometry = scaled_mask_geometry(image_size, cfg.grid, cfg.kernel, cfg.sigma)

    def _mask(self, n: int, size, generator: torch.Generator, device) -> torch.Tensor:
        return self._cells_and_mask(n, size, generator, device)[1]

    def _cells_and_mask(self, n: int, size, generator: torch.Generator, device):
        g = self.geometry
        cells = torch.rand(n, g["grid"] ** 2, generator=generator, device=generator.device).to(device)  # (n, G*G)
        return cells, render_mask(cells, tuple(size), kernel=g["kernel"], sigma=g["sigma"], upsample=self.cfg.upsample)

    @torch.no_grad()
    def sample_masks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"cells": (B, G*G), "mask": (B, 1, H, W)} of uniform random masks for x (None: the agent's seed)."""
        generator = generator or torch.Generator().manual_seed(self.seed)
        cells, mask = self._cells_and_mask(x.shape[0], x.shape[-2:], generator, x.device)
        return {"cells": cells, "mask": mask}

    def training_loss(self, x, y, loss_fn):
        mask = self._mask(x.shape[0], x.shape[-2:], self.rng(x.device), x.device)  # (B, 1, H, W)
        ce = loss_fn(apply_mask(x, soften(mask, self.strength)), y).mean()
        return ce, {"losses/ce": ce.detach(), "policy/mask_mean": mask.mean().detach()}

    @torch.no_grad()
    def masked_eval_input(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x under one uniform random mask shared by the batch (None: seeded with the agent's seed)."""
        generator = generator or torch.Generator().manual_seed(self.seed)
        return apply_mask(x, self._mask(1, x.shape[-2:], generator, x.device))

    def eval_views(self) -> dict[str, EvalView]:
        return {"masked": EvalView(self.masked_eval_input)}

    def resolved_config(self) -> dict:
        return {"method": self.name, "upsample": self.cfg.upsample, **self.geometry}


@dataclass
class GaussianNoiseOptions(AgentCommon):
    """Options of the Gaussian-noise baseline."""

    # Images are normalised with std 0.3213, so 0.3 normalised units is about 0.1 of the [0, 1] intensity
    # range: visible noise that keeps the anatomy readable, the usual strength of noise augmentation.
    noise_std: float = option(0.3, "std of the additive Gaussian noise in normalised units")

    def validate(self) -> None:
        if not self.noise_std >= 0:
            raise UserError(f"--noise-std {self.noise_std}: must be >= 0")


@register_agent("gaussian-noise", options=GaussianNoiseOptions)
class GaussianNoiseAgent(_SeededAgent):
    """Baseline: x + N(0, noise_std^2) per pixel and channel, in normalised units."""

    def __init__(self, cfg: GaussianNoiseOptions, image_size: int, in_chans: int, seed: int = 0):
        super().__init__(seed)
        cfg.validate()
        self.cfg = cfg

    def training_loss(self, x, y, loss_fn):
        noise = torch.randn(x.shape, generator=self.rng(x.device), device=x.device, dtype=x.dtype)  # (B, C, H, W)
        ce = loss_fn(x + (self.cfg.noise_std * self.strength) * noise, y).mean()
        return ce, {"losses/ce": ce.detach()}

    def resolved_config(self) -> dict:
        return {"method": self.name, "noise_std": self.cfg.noise_std}
