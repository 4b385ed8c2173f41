"""``rlmask bench``: training-step and data-pipeline throughput, measured side by side in one run.

Plain and method steps are timed in alternating rounds on the same synthetic batch (every other
round in reverse order), so machine noise hits both alike; the printed ``ratio`` (method step time /
plain step time) is the median over rounds of the ratio within each round, which a burst of noise in
one round does not move. With ``--vary``, the same steps under flipped speed settings (bf16
autocast, memory format, torch.compile, thread count) join the rounds, which is how rlmask's CPU
defaults were chosen.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from rlmask.agents import get_agent
from rlmask.config import check_ranges, option
from rlmask.errors import UserError
from rlmask.runtime import pick_device, resolve_amp, resolve_channels_last, resolve_compile

VARIABLE_SETTINGS = ("amp", "channels_last", "compile", "threads")


@dataclass
class BenchConfig:
    """Options of ``rlmask bench``."""

    model: str = option("resnet18", "classifier to time")
    image_size: int = option(64, "image side in pixels", metavar="PX")
    batch_size: int = option(64, "batch size")
    channels: int = option(3, "input channels")
    method: str = option("plain", "method timed against plain training (a registered agent; its options follow it)")
    rounds: int = option(10, "alternating timing rounds (ratios are medians of the per-round ratios)")
    steps: int = option(3, "steps per round and arm")
    warmup: int = option(3, "untimed steps before timing")
    data: list[str] = option(["synthetic"], "data whose pipeline (batches + augmentation) is timed")
    pipeline_batches: int = option(30, "batches timed for the data pipeline (0: skip)")
    num_workers: int = option(0, "data-loading worker processes for image folders (pipeline timing)")
    device: str = option("auto", "auto, cpu or cuda")
    amp: bool | None = option(
        None, "bf16 autocast (default: where the device computes in bf16 natively, as in training)"
    )
    channels_last: bool | None = option(
        None, "channels-last memory format (default: per device and precision, as in training)"
    )
    compile: bool | None = option(
        None, "torch.compile the classifier and the policy (default: on CUDA only, as in training)"
    )
    threads: int | None = option(None, "CPU threads (default: torch's choice)")
    vary: list[str] = option(
        [],
        "settings to also time flipped, side by side with the chosen ones: "
        "amp, channels_last, compile, threads (half as many)",
        choices=list(VARIABLE_SETTINGS),
    )
    seed: int = option(0, "seed")
    agent: dict = field(default_factory=dict, metadata={"cli": False, "help": "options of the method's agent"})


@dataclass(frozen=True)
class Settings:
    """The speed settings one timed arm runs with."""

    amp: bool
    channels_last: bool
    compile: bool
    threads: int

    def flipped(self, name: str) -> Settings:
        if name == "threads":
            return replace(self, threads=max(1, self.threads // 2))
        return replace(self, **{name: not getattr(self, name)})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, n: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _step_runner(
    cfg: BenchConfig, method: str, settings: Settings, device: torch.device, x: torch.Tensor, y: torch.Tensor
):
    """One training step of ``method`` on the fixed batch (x, y), as the loop runs it, under ``settings``."""
    from rlmask.models import default_small_stem
    from rlmask.train.loop import compile_for_training, make_agent_optimizer, make_optimizer
    from rlmask.train.step import TrainStep
    from rlmask.train.tasks import build_task

    spec = get_agent(method)
    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    options = spec.make_options(cfg.agent if method == cfg.method else {})
    task = build_task(spec.task, **spec.task_options(options))
    model = task.build_model(cfg.model, 10, cfg.channels, default_small_stem(cfg.model, cfg.image_size))
    model.to(device, memory_format=memory_format)
    agent = spec.build(cfg.image_size, cfg.channels, seed=cfg.seed, options=cfg.agent if method == cfg.method else {})
    agent.to(device, memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 1e-4)
    agent_opt = make_agent_optimizer(agent)
    model.train()
    agent.train()
    step_model = compile_for_training(model, agent) if settings.compile else model
    ctx = TrainStep(step_model, task.loss, opt, agent, agent_opt, device=device, amp=settings.amp, total_steps=1)

    def step():
        if torch.get_num_threads() != settings.threads:  # only arms of --vary threads switch
            torch.set_num_threads(settings.threads)
        agent.train_step(ctx.begin(0, 0), x, y)

    return step


def _pipeline_rate(cfg: BenchConfig, device: torch.device) -> float:
    from rlmask.data import Augment, BatchLoader, build_pool

    pool = build_pool(cfg.data, cfg.image_size, cfg.channels)
    loader = BatchLoader(
        pool.splits["train"],
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        device=device,
        num_workers=cfg.num_workers,
    )
    aug = Augment(pool.image_size, train=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, epoch = 0, 0
    _sync(device)
    start = time.perf_counter()
    while images < cfg.pipeline_batches * cfg.batch_size:
        for x_u8, _ in loader.epoch(epoch):
            aug(x_u8, gen)
            images += x_u8.shape[0]
            if images >= cfg.pipeline_batches * cfg.batch_size:
                break
        epoch += 1
    _sync(device)
    return images / (time.perf_counter() - start)


def run_bench(cfg: BenchConfig) -> dict:
    """Images/s of plain training and of ``cfg.method`` (with their step-time ratio), of every flipped
    setting in ``cfg.vary`` (with its step-time ratio to the chosen settings), and of the data pipeline."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    check_ranges(
        cfg,
        {
            "batch_size": (">=", 2),
            "image_size": (">=", 8),
            "channels": (">=", 1),
            "rounds": (">=", 1),
            "steps": (">=", 1),
            "warmup": (">=", 0),
            "pipeline_batches": (">=", 0),
            "num_workers": (">=", 0),
            "threads": (">=", 1),
            "seed": (">=", 0),
        },
    )
    for name in cfg.vary:
        if name not in VARIABLE_SETTINGS:
            raise UserError(f"--vary {name}: choose from {', '.join(VARIABLE_SETTINGS)}")
    amp = resolve_amp(cfg.amp, device)
    channels_last = resolve_channels_last(cfg.channels_last, device, amp)[0]
    base = Settings(amp, channels_last, resolve_compile(cfg.compile, device), torch.get_num_threads())
    settings = {"chosen": base} | {
        f"{name}={getattr(base.flipped(name), name)}": base.flipped(name) for name in dict.fromkeys(cfg.vary)
    }
    methods = ["plain"] + ([cfg.method] if cfg.method != "plain" else [])
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, cfg.channels, cfg.image_size, cfg.image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runners = {(label, m): _step_runner(cfg, m, s, device, x, y) for label, s in settings.items() for m in methods}
    for run in runners.values():
        _timed(run, cfg.warmup, device)
    rounds = {arm: [] for arm in runners}  # seconds of each arm in each round
    order = list(runners.items())
    for r in range(cfg.rounds):  # every other round runs the arms in reverse, so no arm always goes first
        for arm, run in order if r % 2 == 0 else order[::-1]:
            rounds[arm].append(_timed(run, cfg.steps, device))
    torch.set_num_threads(base.threads)
    seconds = {arm: sum(times) for arm, times in rounds.items()}

    def time_ratio(arm, reference) -> float:
        """Median over rounds of the two arms' time ratio within the round: paired, robust to bursts of noise."""
        return round(statistics.median(a / b for a, b in zip(rounds[arm], rounds[reference])), 3)

    images = cfg.rounds * cfg.steps * cfg.batch_size
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({base.threads} threads)",
        "model": cfg.model,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "method": cfg.method,
        "agent": cfg.agent,
        **asdict(base),
        "plain_img_s": round(images / seconds["chosen", "plain"], 2),
    }
    if cfg.method != "plain":
        result["method_img_s"] = round(images / seconds["chosen", cfg.method], 2)
        result["ratio"] = time_ratio(("chosen", cfg.method), ("chosen", "plain"))
    if len(settings) > 1:  # step time under the flipped setting / under the chosen ones, per method
        result["flipped"] = {
            label: {
                m: {"img_s": round(images / seconds[label, m], 2), "time_ratio": time_ratio((label, m), ("chosen", m))}
                for m in methods
            }
            for label in settings
            if label != "chosen"
        }
    if device.type == "cuda":
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # the process's peak resident memory (Linux reports KiB)
        result["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if cfg.pipeline_batches:
        result["pipeline_img_s"] = round(_pipeline_rate(cfg, device), 1)
    return result
