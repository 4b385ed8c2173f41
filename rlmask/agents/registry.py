"""The registry of masking agents, like timm's model registry: ``--method NAME`` -> an :class:`AgentSpec`.

Each agent file registers its class with ``@register_agent(NAME, options=OptionsDataclass, task=...)``
and may register named presets (``register_preset("pgnm-reference", "pgnm", objective="reference")``).
Commands (``pretrain``, ``compare``, ``bench``) and the generated contract tests read the registry; no
command names a method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rlmask.agents.base import AgentCommon, MaskAgent
from rlmask.errors import UserError
from rlmask.io import to_plain


@dataclass(frozen=True)
class AgentSpec:
    """A registered method: the agent class, its options dataclass, its task and preset option values."""

    name: str
    cls: type[MaskAgent]
    options: type | None = None  # dataclass of the agent's own options (None: it has none)
    task: str = "classify"
    presets: dict = field(default_factory=dict)  # option values this name fixes (a preset of another agent)
    in_default_comparison: bool = False  # part of `rlmask compare` when --methods is not given
    summary: str = ""
    # An option naming a plain model's checkpoint (e.g. gradcam-mask's "gradcam_from"): ``rlmask compare`` fills
    # it with the same seed's plain run, trained first.
    plain_checkpoint_option: str | None = None

    def make_options(self, values: dict | None = None):
        """The options dataclass from preset values, then ``values`` (plain data); None without options.

        Unknown names are an error that names the method.
        """
        if self.options is None:
            if values:
                raise UserError(f"--method {self.name}: takes no options (got {', '.join(sorted(values))})")
            return None
        merged = dict(self.presets) | dict(values or {})
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(merged) - known)
        if unknown:
            flags = ", ".join("--" + u.replace("_", "-") for u in unknown)
            raise UserError(f"--method {self.name}: {flags} is not an option of this method")
        options = self.options(**merged)
        if isinstance(options, AgentCommon):
            options.validate_common()
            if options.mask_schedule != "constant" and self.cls is MaskAgent:
                raise UserError(f"--mask-schedule {options.mask_schedule}: method {self.name} has no masking to anneal")
        if hasattr(options, "validate"):
            options.validate()
        return options

    def task_options(self, options) -> dict:
        """The keyword options of this agent's task taken from its resolved ``options`` (``make_options``)."""
        return self.cls.task_options(options) if options is not None else {}

    def build(self, image_size: int, in_chans: int, seed: int = 0, options: dict | None = None) -> MaskAgent:
        """The agent for images of ``image_size`` px with ``in_chans`` channels."""
        opts = self.make_options(options)
        if self.options is None:
            return self.cls()
        agent = self.cls(opts, image_size, in_chans, seed=seed)
        if isinstance(opts, AgentCommon):
            agent.augment, agent.mask_schedule = opts.augment, opts.mask_schedule
        return agent


AGENTS: dict[str, AgentSpec] = {
    "plain": AgentSpec("plain", MaskAgent, options=AgentCommon, summary="no mask: plain training")
}


def register_agent(
    name: str,
    *,
    options: type | None = None,
    task: str = "classify",
    in_default_comparison: bool = False,
    plain_checkpoint_option: str | None = None,
):
    """Class decorator: register an agent class under ``name`` (its ``name`` attribute is set to it).

    ``plain_checkpoint_option``: the option (a field of ``options``) through which the agent takes a plain
    model's checkpoint; ``rlmask compare`` fills it per seed."""

    def decorate(cls: type[MaskAgent]) -> type[MaskAgent]:
        if name in AGENTS:
            raise ValueError(f"agent {name!r} is already registered")
        cls.name = name
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        AGENTS[name] = AgentSpec(name, cls, options, task, {}, in_default_comparison, summary, plain_checkpoint_option)
        return cls

    return decorate


def register_preset(name: str, base: str, *, in_default_comparison: bool = False, summary: str = "", **values) -> None:
    """Register ``name`` as agent ``base`` with some options fixed (e.g. PGNM's two objectives)."""
    if name in AGENTS:
        raise ValueError(f"agent {name!r} is already registered")
    spec = AGENTS[base]
    AGENTS[name] = dataclasses.replace(
        spec,
        name=name,
        presets=dict(spec.presets) | values,
        in_default_comparison=in_default_comparison,
        summary=summary or f"{base} with " + ", ".join(f"{k}={v}" for k, v in values.items()),
    )


# The baselines a user would pick instead of a masking agent: plain training with a batch augmentation
# (rlmask.agents.augment). Every agent takes the same --augment, to run on top of one.
for _name, _summary in (
    ("trivialaugment", "TrivialAugment (kornia): one random operation of random magnitude per image group"),
    ("randaugment", "RandAugment (kornia): two operations at magnitude 10"),
    ("mixup", "Mixup: convex combinations of image pairs and their labels, Beta(0.2, 0.2)"),
    ("cutmix", "CutMix: a box of another image pasted in, labels mixed by area, Beta(1, 1)"),
):
    register_preset(_name, "plain", summary=_summary, augment=_name)


def unregister(name: str) -> None:
    """Remove a registered name (for tests that register toy agents)."""
    AGENTS.pop(name, None)


def get_agent(name: str, option: str = "--method") -> AgentSpec:
    """The spec of ``name``; unknown names are a one-line error listing the registered ones."""
    if name not in AGENTS:
        raise UserError(f"{option} {name}: unknown method; choose from {', '.join(AGENTS)}")
    return AGENTS[name]


def owner_of(option_name: str) -> list[str]:
    """Registered methods (not presets) whose options include ``option_name``."""
    return [
        s.name
        for s in AGENTS.values()
        if not s.presets and s.options is not None and option_name in {f.name for f in dataclasses.fields(s.options)}
    ]


def same_agent_options(method: str | None, old: dict | None, new: dict | None) -> bool:
    """Whether a run recorded with agent options ``old`` (config.json) had the options ``new``.

    An option that ``old`` lacks was added to rlmask after that run: it counts as the same when ``new`` holds
    its default, which is what the run used. Runs recorded before an option existed stay resumable and reusable.
    """
    old, new = dict(old or {}), dict(new or {})
    spec = AGENTS.get(method or "")
    if spec is not None and spec.options is not None:
        defaults = to_plain(spec.make_options())  # the preset's values over the dataclass's defaults
        new = {k: v for k, v in new.items() if k in old or k not in defaults or v != defaults[k]}
    return old == new
