"""Masking agents, one file each, each registering its name, options and task (see ``registry.py``).

- ``plain``: no mask (``MaskAgent`` itself)
- ``pgnm`` (presets ``pgnm-reinforce``, ``pgnm-reference``): Policy Gradient-Driven Noise Mask (``noise.py``)
- ``random-mask``: Beta(1, 1) masks rendered like PGNM's (ablation, ``noise.py``)
- ``gaussian-noise``: additive Gaussian noise (baseline, ``noise.py``)
- ``context`` (presets ``context-dqn``, ``context-random``): Intelligent Masking, a DQN choosing the block a
  context encoder inpaints (``occlusion.py``, task ``reconstruct``)

Importing this package imports every agent file, which registers it.
"""

from __future__ import annotations

from rlmask.agents import noise  # noqa: F401  (registers pgnm, random-mask, gaussian-noise)
from rlmask.agents import occlusion  # noqa: F401  (registers context, context-dqn, context-random)
from rlmask.agents.base import AgentOptimizer, EvalView, MaskAgent, StepContext
from rlmask.agents.registry import AGENTS, AgentSpec, get_agent, register_agent, register_preset

__all__ = ["AGENTS", "AgentOptimizer", "AgentSpec", "EvalView", "MaskAgent", "StepContext", "get_agent",
           "register_agent", "register_preset"]
