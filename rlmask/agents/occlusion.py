"""Intelligent Masking: a deep Q-network picks the block a context encoder must inpaint (Bahrami et al., MLMI 2022).

Read top to bottom, like CleanRL's ``dqn.py``: options, the Q-network, the exploration schedule, the replay
buffer, then the agent whose ``train_step`` is one environment step and two updates.

The environment is the reconstructor (the reconstruct task's U-Net). A *state* is an image x; an *action*
is the top-left cell a of a ``block`` x ``block`` square of a ``grid`` x ``grid`` partition of x; the block
is hidden, ``x_masked = (1 - M_a) * x``, the reconstructor inpaints it and the *reward* is its
reconstruction error there (or over the whole image, as the reference). Every episode is this one step,
so the Q-learning target has no bootstrap term: ``td_target = reward``, and the Q-network regresses the
error each block would cause: ``loss = MSE(Q(x)[a], td_target)``. Acting greedily hides the block the
reconstructor is worst at, which is the point: its updates go to what it has not learnt yet.

Per batch (``train_step``):
1. Q(x) (B, G*G); actions from the exploration rule (uniform / epsilon-greedy / greedy) over the valid
   top-left cells (a block never leaves the image);
2. the reconstructor's update on the masked copies: ``ctx.update(rec_loss, agent=False)``;
3. the Q-network's update on the detached errors: ``ctx.update(q_loss, model=False)``.

Beyond the paper (both off by default):
- a replay buffer of (image, action, reward) transitions: each Q update also fits a sample of older
  transitions. In a bandit it only decorrelates the regression and reuses data; the rewards it replays
  are stale, since the reconstructor has improved since they were measured.
- a target network: with no bootstrap term there is no target value for it to stabilise; here the lagged
  copy *acts* (chooses the blocks), refreshed every ``target_update`` steps, so the masking policy changes
  in steps rather than with every Q update.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlmask.agents.base import AgentCommon, AgentOptimizer, blend
from rlmask.agents.noise import _check_choices, _SeededAgent
from rlmask.agents.registry import register_agent, register_preset
from rlmask.config import option
from rlmask.errors import UserError
from rlmask.masks import block_mask
from rlmask.models import seeded_init
from rlmask.models.unet import CONTEXT_CHANNELS, _double_conv


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass
class ContextOptions(AgentCommon):
    """Options of the Intelligent Masking agent (and, through ``task_options``, of its reconstruct task)."""

    masking: str = option(
        "dqn",
        "where blocks are hidden: 'dqn' (the Q-network chooses) or 'random' (uniform "
        "throughout, the paper's baseline; the Q-network is still trained, for its maps)",
        choices=["dqn", "random"],
    )
    grid: int = option(9, "grid side G: the Q-network gives one value per cell of a G x G partition of the image")
    block: int = option(2, "side in cells of the block an action hides in training")
    val_block: int = option(3, "side in cells of the validation blocks (fixed seeded positions, equal for all runs)")
    val_seed: int = option(0, "seed of the fixed validation block positions")
    masks_per_image: int = option(1, "blocks per image and step, each a masked copy (greedy: the M best blocks)")
    exploration: str = option(
        "reference",
        "'reference': uniform actions for the first explore_fraction of "
        "training, then greedy; 'epsilon': epsilon-greedy with a linear decay",
        choices=["reference", "epsilon"],
    )
    explore_fraction: float = option(
        0.2,
        "reference: fraction of training with uniform actions; epsilon: "
        "fraction over which epsilon decays from start_epsilon to end_epsilon",
    )
    start_epsilon: float = option(1.0, "epsilon at the start of training (exploration epsilon)")
    end_epsilon: float = option(0.05, "epsilon after the decay (exploration epsilon)")
    q_target: str = option(
        "masked",
        "reward the Q-network regresses: 'masked' (error on the hidden block, the "
        "reconstructor's loss) or 'image' (whole-image mean squared error, as the reference)",
        choices=["masked", "image"],
    )
    q_channels: str = option(",".join(map(str, CONTEXT_CHANNELS)), "widths of the Q-network's encoder blocks")
    replay_size: int = option(0, "replay buffer capacity in transitions (0: off, the paper's on-policy update)")
    replay_batch: int = option(32, "replayed transitions per Q update (with replay_size > 0)")
    target_update: int = option(0, "steps between copies of the Q-network into the acting target network (0: off)")
    q_lr: float = option(1e-3, "Q-network learning rate (Adam, as the reference)")
    q_schedule: str = option(
        "constant",
        "Q-network learning-rate schedule ('multistep' uses --milestones and --gamma, as the reference)",
        choices=["constant", "cosine", "step", "multistep"],
    )
    scaling: str = option(
        "rlmask",
        "input scaling of the reconstruct task: 'rlmask' (rlmask's normalisation) or 'reference' ([-1, 1])",
        choices=["rlmask", "reference"],
    )
    probe: bool = option(
        False,
        "also score a linear probe (logistic regression on pooled encoder features) on the "
        "validation labels at every validation",
    )

    def channels(self) -> tuple[int, ...]:
        try:
            widths = tuple(int(c) for c in str(self.q_channels).split(","))
        except ValueError:
            widths = ()
        if not widths or min(widths) < 1:
            raise UserError(f"--q-channels {self.q_channels}: expected comma-separated positive integers")
        return widths

    def validate(self) -> None:
        """Raise ``UserError`` naming the first option that is out of range."""
        _check_choices(self, ("masking", "exploration", "q_target", "q_schedule", "scaling"))
        checks = [
            ("grid", self.grid >= 1, "must be >= 1"),
            ("block", 1 <= self.block <= self.grid, "must be in [1, grid]"),
            ("val_block", 1 <= self.val_block <= self.grid, "must be in [1, grid]"),
            ("masks_per_image", self.masks_per_image >= 1, "must be >= 1"),
            (
                "masks_per_image",
                self.masks_per_image <= (self.grid - self.block + 1) ** 2,
                "exceeds the number of block positions",
            ),
            ("explore_fraction", 0 <= self.explore_fraction <= 1, "must be in [0, 1]"),
            ("start_epsilon", 0 <= self.start_epsilon <= 1, "must be in [0, 1]"),
            ("end_epsilon", 0 <= self.end_epsilon <= 1, "must be in [0, 1]"),
            ("replay_size", self.replay_size >= 0, "must be >= 0"),
            ("replay_batch", self.replay_batch >= 1, "must be >= 1"),
            ("target_update", self.target_update >= 0, "must be >= 0"),
            ("q_lr", self.q_lr > 0, "must be > 0"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: {what}")
        self.channels()


# ---------------------------------------------------------------------------------------------
# The Q-network: the reference's encoder design, then a depthwise 5x5 and a 1x1 conv to one value per cell
# ---------------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    """Q(x): (B, C, H, W) -> (B, G*G), the predicted reconstruction error of hiding the block at each cell.

    Double-conv blocks of ``channels`` widths with a 2x2 max-pool between them, as the reconstructor's
    encoder, except that pooling stops before the map would fall below G x G (at 300 px and G = 9 it pools
    every time, as the reference: 300 -> ... -> 9; at 28 px it stops at 14); the map is then average-pooled
    to exactly G x G, mixed per channel by a depthwise 5x5 conv and reduced to one value per cell by a 1x1 conv.
    """

    def __init__(self, in_chans: int, grid: int, image_size: int, channels: tuple[int, ...] = CONTEXT_CHANNELS):
        super().__init__()
        self.grid = grid
        widths = (in_chans, *channels)
        self.blocks = nn.ModuleList(_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.pools, size = [], image_size
        for _ in channels[1:]:  # pool before block i when the map stays at least G x G
            self.pools.append(size // 2 >= grid)
            size = size // 2 if self.pools[-1] else size
        self.depthwise = nn.Conv2d(channels[-1], channels[-1], 5, padding=2, groups=channels[-1])
        self.head = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x)
        for pool, block in zip(self.pools, self.blocks[1:]):
            x = block(F.max_pool2d(x, 2) if pool else x)
        x = F.adaptive_avg_pool2d(x, self.grid)  # (B, channels[-1], G, G)
        return self.head(self.depthwise(x)).flatten(1).float()  # (B, G*G)


# ---------------------------------------------------------------------------------------------
# Exploration
# ---------------------------------------------------------------------------------------------
def linear_schedule(start_e: float, end_e: float, duration: float, t: float) -> float:
    """Epsilon at step ``t``: from ``start_e`` down (or up) to ``end_e`` linearly over ``duration`` steps."""
    slope = (end_e - start_e) / duration if duration > 0 else 0.0
    return max(slope * t + start_e, end_e) if end_e <= start_e else min(slope * t + start_e, end_e)


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------
@register_agent("context", options=ContextOptions, task="reconstruct")
class ContextMaskingAgent(_SeededAgent):
    """Intelligent Masking: a deep Q-network chooses which block a context encoder must inpaint."""

    def __init__(self, cfg: ContextOptions, image_size: int, in_chans: int, seed: int = 0):
        super().__init__(seed)
        cfg.validate()
        if cfg.grid > image_size:
            raise UserError(f"--grid {cfg.grid}: more cells than the image's {image_size} pixels")
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        with seeded_init(g):  # the same initial Q-network in every process
            self.q_network = QNetwork(in_chans, cfg.grid, image_size, cfg.channels())
        self.target_network = None
        if cfg.target_update:
            self.target_network = copy.deepcopy(self.q_network).requires_grad_(False).eval()
        # Valid top-left cells: the whole block stays inside the grid. (B-independent (G*G,) bool.)
        rows = torch.arange(cfg.grid * cfg.grid) // cfg.grid
        cols = torch.arange(cfg.grid * cfg.grid) % cfg.grid
        self.register_buffer("valid", (rows <= cfg.grid - cfg.block) & (cols <= cfg.grid - cfg.block), persistent=False)
        if cfg.replay_size:  # preallocated, so the state dict (and an exact resume) holds the whole buffer
            self.register_buffer("replay_x", torch.zeros(cfg.replay_size, in_chans, image_size, image_size))
            self.register_buffer("replay_action", torch.zeros(cfg.replay_size, dtype=torch.long))
            self.register_buffer("replay_reward", torch.zeros(cfg.replay_size))
            self.register_buffer("replay_count", torch.zeros((), dtype=torch.long))  # transitions ever added

    # --- acting -------------------------------------------------------------------------------
    def corners(self, action: torch.Tensor) -> torch.Tensor:
        """Flat cell indices (N,) -> (row, column) (N, 2)."""
        return torch.stack([action // self.cfg.grid, action % self.cfg.grid], dim=1)

    def random_actions(self, n: int, m: int, generator: torch.Generator, device) -> torch.Tensor:
        """(n, m) valid top-left cells drawn uniformly from ``generator``."""
        side = self.cfg.grid - self.cfg.block + 1
        r = torch.randint(0, side, (n, m), generator=generator, device=generator.device)
        c = torch.randint(0, side, (n, m), generator=generator, device=generator.device)
        return (r * self.cfg.grid + c).to(device)

    def greedy_actions(self, q_values: torch.Tensor, m: int) -> torch.Tensor:
        """(B, m) the m valid cells of highest Q, best first."""
        q = q_values.detach().masked_fill(~self.valid, float("-inf"))  # (B, G*G)
        return q.topk(m, dim=1).indices

    def exploration_rate(self, ctx) -> float:
        """Probability of a uniform action at this step: 1 for random masking; the reference's schedule
        (uniform until ``explore_fraction`` of training, then greedy) or epsilon's linear decay."""
        c = self.cfg
        if c.masking == "random":
            return 1.0
        if c.exploration == "reference":
            return 1.0 if ctx.progress < c.explore_fraction else 0.0
        return linear_schedule(c.start_epsilon, c.end_epsilon, c.explore_fraction * ctx.total_steps, ctx.step)

    def select_actions(self, q_values: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        """(B, M) actions: per mask, uniform with probability ``epsilon``, else the m-th best block."""
        b, m = q_values.shape[0], self.cfg.masks_per_image
        explore = torch.rand(b, m, generator=generator, device=generator.device).to(q_values.device) < epsilon
        random_a = self.random_actions(b, m, generator, q_values.device)
        if epsilon >= 1.0:
            return random_a
        return torch.where(explore, random_a, self.greedy_actions(q_values, m))

    def hide(self, x: torch.Tensor, actions: torch.Tensor, block: int | None = None):
        """Masked copies of x for actions (B, M): (x_masked, target, hidden), each (B*M, C|1, H, W)."""
        m = actions.shape[1]
        hidden = block_mask(
            self.corners(actions.reshape(-1)), block or self.cfg.block, self.cfg.grid, x.shape[-2:]
        )  # (B*M, 1, H, W), 1 = hidden
        target = x.repeat_interleave(m, dim=0) if m > 1 else x  # (B*M, C, H, W)
        return target * (1 - hidden), target, hidden

    # --- the replay buffer (optional) -----------------------------------------------------------
    def replay_sample(self, generator: torch.Generator):
        """A uniform sample of stored transitions (x, action, reward), or None while the buffer is empty."""
        filled = int(min(int(self.replay_count), self.cfg.replay_size))
        if filled == 0:
            return None
        idx = torch.randint(0, filled, (self.cfg.replay_batch,), generator=generator, device=generator.device)
        idx = idx.to(self.replay_x.device)
        return self.replay_x[idx], self.replay_action[idx], self.replay_reward[idx]

    @torch.no_grad()
    def replay_add(self, x: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> None:
        """Store transitions x (N, C, H, W), action (N,), reward (N,) in ring order."""
        n, cap = x.shape[0], self.cfg.replay_size
        pos = (int(self.replay_count) + torch.arange(n, device=x.device)) % cap
        self.replay_x[pos] = x.float()
        self.replay_action[pos] = action
        self.replay_reward[pos] = reward.float()
        self.replay_count += n

    # --- one step ----------------------------------------------------------------------------------
    def train_step(self, ctx, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One environment step on the batch x (B, C, H, W) and two updates; the labels y are not used."""
        c, rng = self.cfg, self.rng(x.device)
        b, m = x.shape[0], c.masks_per_image
        replayed = self.replay_sample(rng) if c.replay_size else None
        q_input = torch.cat([x, replayed[0].to(x.dtype)]) if replayed is not None else x
        with ctx.autocast():
            q_all = self.q_network(q_input)  # (B [+ R], G*G)
        q_values = q_all[:b]  # (B, G*G)
        if self.target_network is not None:
            if ctx.step % c.target_update == 0:  # refresh the acting copy (its step counter is the loop's)
                self.target_network.load_state_dict(self.q_network.state_dict())
            with torch.no_grad(), ctx.autocast():
                acting_q = self.target_network(x)  # (B, G*G)
        else:
            acting_q = q_values
        epsilon = self.exploration_rate(ctx)
        actions = self.select_actions(acting_q, epsilon, rng)  # (B, M)

        # 1. the reconstructor inpaints the hidden blocks
        x_masked, target, hidden = self.hide(x, actions)  # (B*M, ...)
        x_masked = blend(target, x_masked, self.mask_strength(ctx))  # --mask-schedule
        out = {}
        with ctx.autocast():
            errors = ctx.loss(x_masked, target=target, mask=hidden, out=out)  # (B*M,)
        rec_loss = errors.mean()
        ctx.update(rec_loss, agent=False)

        # 2. the Q-network regresses the errors it caused: td_target = reward (one-step episodes)
        if c.q_target == "masked":
            reward = errors.detach()  # (B*M,)
        else:
            reward = (out["reconstruction"].detach().float() - target.float()).square().mean((1, 2, 3))
        q_taken = q_values.gather(1, actions).reshape(-1)  # (B*M,)
        td_target = reward
        if replayed is not None:
            q_taken = torch.cat([q_taken, q_all[b:].gather(1, replayed[1][:, None]).squeeze(1)])
            td_target = torch.cat([reward, replayed[2]])
        q_loss = F.mse_loss(q_taken, td_target)
        ctx.update(q_loss, model=False)
        if c.replay_size:
            self.replay_add(x.repeat_interleave(m, dim=0) if m > 1 else x, actions.reshape(-1), reward)

        rows = (actions // c.grid).float()
        logs = {
            "losses/rec": rec_loss,
            "losses/q": q_loss,
            "policy/epsilon": torch.tensor(epsilon),
            "policy/reward": reward.mean(),
            "policy/q_taken": q_values.gather(1, actions).mean(),
            "policy/q_mean": q_values.masked_select(self.valid[None].expand_as(q_values)).mean(),
            "policy/action_row": rows.mean(),
            "policy/action_col": (actions % c.grid).float().mean(),
        }
        return {k: v.detach().float() for k, v in logs.items()}

    # --- evaluation and figures ---------------------------------------------------------------------
    @torch.no_grad()
    def q_map(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x) in eval mode as (B, G, G), the training mode left as it was."""
        was_training = self.q_network.training
        self.q_network.eval()
        try:
            return self.q_network(x).reshape(-1, self.cfg.grid, self.cfg.grid)
        finally:
            self.q_network.train(was_training)

    @torch.no_grad()
    def choose(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) the block the agent hides without exploration: greedy for dqn, uniform (from ``generator``,
        None: the agent's seed) for random masking."""
        if self.cfg.masking == "random":
            generator = generator or torch.Generator().manual_seed(self.seed)
            return self.random_actions(x.shape[0], 1, generator, x.device)[:, 0]
        return self.greedy_actions(self.q_map(x).flatten(1), 1)[:, 0]

    @torch.no_grad()
    def sample_masks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"mask": keep-weights (B, 1, H, W), 0 on the chosen training-size block; "qvalues": the Q map
        (B, 1, H, W) upsampled and scaled to [0, 1] per image}."""
        actions = self.choose(x, generator)
        _, _, hidden = self.hide(x, actions[:, None])
        q = self.q_map(x)[:, None]  # (B, 1, G, G)
        lo, hi = q.amin((2, 3), keepdim=True), q.amax((2, 3), keepdim=True)
        q = F.interpolate((q - lo) / (hi - lo).clamp_min(1e-12), size=x.shape[-2:], mode="nearest")
        return {"mask": 1 - hidden, "qvalues": q}

    @torch.no_grad()
    def write_figures(self, model: nn.Module, x: torch.Tensor, out, mean: float, std: float) -> None:
        """gallery.png: image, chosen block, masked image, reconstruction, Q map of validation images x."""
        from rlmask.report.figures import plot_image_rows

        was_training = model.training
        model.eval()
        sampled = self.sample_masks(x, torch.Generator().manual_seed(self.seed))
        keep = sampled["mask"]
        recon = model(x * keep).float()
        model.train(was_training)

        def show(t):  # (B, C, H, W) normalised -> (B, H, W[, 3]) in [0, 1]
            t = (t * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            return t[..., 0] if t.shape[-1] == 1 else t

        rows = {
            "image": show(x),
            "chosen block": (1 - keep[:, 0]).cpu().numpy(),
            "masked": show(x * keep),
            "reconstruction": show(recon * (1 - keep) + x * keep),
            "Q map": sampled["qvalues"][:, 0].cpu().numpy(),
        }
        plot_image_rows(
            rows,
            Path(out) / "gallery.png",
            cmaps={"chosen block": "magma", "Q map": "viridis"},
            title=f"context ({self.cfg.masking}): block of {self.cfg.block}x{self.cfg.block} cells of a "
            f"{self.cfg.grid}x{self.cfg.grid} grid",
        )

    # --- plumbing --------------------------------------------------------------------------------
    @staticmethod
    def task_options(options: ContextOptions) -> dict:
        return {
            "scaling": options.scaling,
            "grid": options.grid,
            "val_block": options.val_block,
            "val_seed": options.val_seed,
            "probe": options.probe,
        }

    def optimizer_options(self) -> AgentOptimizer:
        return AgentOptimizer(
            lr=self.cfg.q_lr, momentum=0.0, weight_decay=0.0, optimizer="adam", schedule=self.cfg.q_schedule
        )

    def resolved_config(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self.cfg)}


register_preset("context-dqn", "context", masking="dqn", summary="Intelligent Masking: DQN-chosen inpainting blocks")
register_preset(
    "context-random",
    "context",
    masking="random",
    summary="Intelligent Masking's baseline: uniformly placed inpainting blocks",
)
