"""Masking agents, one file each, each registering its name, options and task (see ``registry.py``).

- ``plain``: no mask (``MaskAgent`` itself)
- ``pgnm`` (presets ``pgnm-reinforce``, ``pgnm-reference``): Policy Gradient-Driven Noise Mask (``noise.py``)
- ``random-mask``: Beta(1, 1) masks rendered like PGNM's (ablation, ``noise.py``)
- ``gaussian-noise``: additive Gaussian noise (baseline, ``noise.py``)
- ``apga`` (presets ``apga-reference``, ``apga-bernoulli``): Adversarial Policy Gradient Augmentation
  (``segmentation.py``)
- ``cutout``, ``gradcam-mask``: random erasing and Grad-CAM-guided masking (APGA's baselines, ``segmentation.py``)
- ``context`` (presets ``context-dqn``, ``context-random``): Intelligent Masking, a DQN choosing the block a
  context encoder inpaints (``occlusion.py``, task ``reconstruct``)

Importing this package imports every agent file, which registers it.
"""

from __future__ import annotations

# Importing the agent files registers them: pgnm, random-mask, gaussian-noise (noise); apga, cutout,
# gradcam-mask (segmentation); context (occlusion).
from rlmask.agents import noise, occlusion, segmentation  # noqa: F401
from rlmask.agents.base import AgentOptimizer, EvalView, MaskAgent, StepContext
from rlmask.agents.registry import AGENTS, AgentSpec, get_agent, register_agent, register_preset

__all__ = [
    "AGENTS",
    "AgentOptimizer",
    "AgentSpec",
    "EvalView",
    "MaskAgent",
    "StepContext",
    "get_agent",
    "register_agent",
    "register_preset",
]
