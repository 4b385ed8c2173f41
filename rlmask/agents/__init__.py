"""Masking agents, one file each; this registry maps a ``--method`` name to its agent.

- ``plain``: no mask (``MaskAgent`` itself)
- ``pgnm``: Policy Gradient-Driven Noise Mask (``noise.NoiseMaskAgent``)
- ``random-mask``: Beta(1, 1) masks rendered like PGNM's (ablation)
- ``gaussian-noise``: additive Gaussian noise (baseline)
"""

from __future__ import annotations

from rlmask.agents.base import AgentOptimizer, MaskAgent
from rlmask.agents.noise import GaussianNoiseAgent, NoiseConfig, NoiseMaskAgent, RandomMaskAgent
from rlmask.errors import UserError

AGENTS = {"pgnm": NoiseMaskAgent, "random-mask": RandomMaskAgent, "gaussian-noise": GaussianNoiseAgent}
METHODS = ("plain", *AGENTS)


def build_agent(method: str, image_size: int, in_chans: int, seed: int = 0, **options) -> MaskAgent:
    """The agent of ``method`` for images of ``image_size`` px with ``in_chans`` channels.

    ``options`` are fields of :class:`NoiseConfig` (unknown names are an error).
    """
    if method == "plain":
        return MaskAgent()
    if method not in AGENTS:
        raise UserError(f"--method {method}: unknown method; choose from {', '.join(METHODS)}")
    try:
        cfg = NoiseConfig(**options)
    except TypeError as err:
        raise UserError(f"--method {method}: {err}") from None
    cfg.validate()
    return AGENTS[method](cfg, image_size, in_chans, seed=seed)


__all__ = ["AGENTS", "METHODS", "AgentOptimizer", "MaskAgent", "NoiseConfig", "build_agent"]
