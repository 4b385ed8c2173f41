"""``rlmask compare``: every method pretrained then fine-tuned, against plain training, same seeds.

For each seed, every method sees the same data order and augmentation (both are functions of the
seed and the epoch). Two views are reported:

1. equal compute (first): plain training for ``epochs + finetune_epochs`` epochs against each method's
   ``epochs`` of pretraining + ``finetune_epochs`` of fine-tuning on clean images;
2. the reference's view (second): plain training for ``epochs`` only, as the published comparison did.

Each sub-run is an ordinary run folder; a comparison that is run again skips finished sub-runs and
resumes an interrupted one from its last.pt.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlmask.agents import AGENTS, get_agent
from rlmask.config import coerce_all, option
from rlmask.data import Augment, build_pool
from rlmask.errors import UserError
from rlmask.evaluate.metrics import SUMMARY_METRICS, mean_ci
from rlmask.io import atomic_write_bytes, load_checkpoint, read_jsonl, to_plain, write_json
from rlmask.report.figures import plot_mask_gallery, plot_training_curves
from rlmask.train.loop import TrainConfig, fit
from rlmask.train.methods import FinetuneConfig, PretrainConfig, finetune, pretrain

METRICS = SUMMARY_METRICS
DEFAULT_METHODS = ["plain", *(name for name, spec in AGENTS.items() if spec.in_default_comparison)]
# TrainConfig fields that are per sub-run, not shared by the comparison
PER_RUN = ("seed", "out", "resume", "epochs")
# FinetuneConfig keeps the reference's fine-tuning schedule: these are not taken from the comparison
FINETUNE_OWN = ("lr", "schedule", "warmup_epochs", "warmup_start", "init")


@dataclass
class CompareConfig(TrainConfig):
    """Options of ``rlmask compare``: every ``rlmask train`` option (shared by every sub-run: plain training,
    pretraining and, except the learning-rate schedule, fine-tuning), and the comparison's own."""

    epochs: int = option(4, "pretraining epochs of each method")
    out: str = option("runs/compare", "output directory", metavar="DIR")
    finetune_epochs: int = option(1, "fine-tuning epochs after pretraining (plain gets epochs + finetune_epochs)")
    seeds: int = option(2, "number of seeds (0 .. seeds-1)")
    methods: list[str] = option(DEFAULT_METHODS, f"methods to compare: {', '.join(AGENTS)}", metavar="METHOD")
    finetune_lr: float = option(1e-3, "fine-tuning learning rate (reference: 1e-3)")
    finetune_warmup: float = option(0.7, "fine-tuning warm-up as a fraction of finetune_epochs (reference: 7 of 10)")
    method_option: list[str] = option([], "an option of one method, METHOD:NAME=VALUE (repeatable); a config file "
                                      "may instead hold a section per method", metavar="METHOD:NAME=VALUE")
    # {method: {option: value}} from the config file's per-method sections and --method-option
    method_options: dict = field(default_factory=dict, metadata={"cli": False, "help": "per-method options"})

    def validate(self) -> None:
        super().validate()
        for m in self.methods:
            get_agent(m, "--methods")
        if self.seeds < 1 or self.finetune_epochs < 0:
            raise UserError("--seeds must be >= 1, --finetune-epochs >= 0")
        options = {m: dict(v) for m, v in self.method_options.items()}
        for item in self.method_option:
            method, sep, assignment = item.partition(":")
            name, eq, value = assignment.partition("=")
            if not (sep and eq and name):
                raise UserError(f"--method-option {item}: expected METHOD:NAME=VALUE")
            spec = get_agent(method, "--method-option")
            name = name.replace("-", "_")
            if spec.options is None:
                raise UserError(f"--method-option {item}: method {method} takes no options")
            known = {f.name for f in dataclasses.fields(spec.options)}
            if name not in known:
                raise UserError(f"--method-option {item}: --{name.replace('_', '-')} is not an option of {method}")
            options.setdefault(method, {}).update(coerce_all(spec.options, {name: value}, f"--method-option {item}"))
        for method, values in options.items():
            get_agent(method, "--config").make_options(values)  # unknown or out-of-range options fail now
        # <<< a method pretraining without labels (reconstruct task) is scored after fine-tuning only
        unlabelled = [m for m in self.methods if get_agent(m).task != "classify"]
        if unlabelled and self.finetune_epochs == 0:
            raise UserError(f"--finetune-epochs 0: {', '.join(unlabelled)} pretrain(s) without labels and need "
                            "fine-tuning epochs to be scored")  # >>>
        self.method_options = options


def _agent_options(method: str, cfg: CompareConfig) -> dict:
    """Every option of ``method``'s agent as plain data: its defaults, its preset, the comparison's values."""
    options = get_agent(method).make_options(cfg.method_options.get(method))
    return to_plain(options) if options is not None else {}


def _train_fields(cfg: CompareConfig, skip: tuple[str, ...] = ()) -> dict:
    """The comparison's ``rlmask train`` options, shared by its sub-runs."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in PER_RUN + skip}


REUSE_KEYS = ("data", "model", "epochs", "seed", "image_size", "lr", "batch_size", "method", "train_per_class",
              "eval_per_class", "init", "agent")


def _run_once(run, run_cfg) -> dict:
    """Run ``run(run_cfg)`` unless its folder already holds metrics.json; resume from last.pt if present.

    A folder written with other options is an error, never silently reused.
    """
    out = Path(run_cfg.out)
    if (out / "config.json").is_file():
        old, new = json.loads((out / "config.json").read_text()), to_plain(run_cfg)
        changed = [k for k in REUSE_KEYS if new.get(k) is not None and k in old and old[k] != new[k]]
        if changed:
            raise UserError(f"--out: {out} holds a run with other options ({', '.join(changed)}); "
                            "choose another --out or delete it")
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    if (out / "last.pt").is_file():
        run_cfg = dataclasses.replace(run_cfg, resume=str(out / "last.pt"))
    return run(run_cfg)


def _scores(metrics: dict) -> dict:
    split = metrics.get("test") or metrics["val"]
    return {k: split[k] for k in METRICS}


def run_comparison(cfg: CompareConfig) -> dict:
    """Run every method for every seed; write comparison.json, comparison.md and the figures."""
    cfg.validate()
    out = Path(cfg.out)
    start = time.perf_counter()
    total = cfg.epochs + cfg.finetune_epochs
    rows: dict[str, list[dict]] = {}
    curves: dict[str, list[list[dict]]] = {}
    for seed in range(cfg.seeds):
        for method in cfg.methods:
            if method == "plain":
                for label, epochs in ((f"plain ({total} ep)", total), (f"plain ({cfg.epochs} ep, reference view)", cfg.epochs)):
                    folder = out / ("plain" if epochs == total else "plain-short") / f"seed{seed}"
                    run_cfg = TrainConfig(**_train_fields(cfg), seed=seed, out=str(folder), epochs=epochs)
                    metrics = _run_once(fit, run_cfg)
                    rows.setdefault(label, []).append({"seed": seed, **_scores(metrics)})
                    curves.setdefault(label, []).append(read_jsonl(folder / "log.jsonl"))
                    if total == cfg.epochs:
                        break
                continue
            pre_dir, fine_dir = out / method / f"seed{seed}" / "pretrain", out / method / f"seed{seed}" / "finetune"
            pre_cfg = PretrainConfig(**_train_fields(cfg), seed=seed, out=str(pre_dir), epochs=cfg.epochs,
                                     method=method, agent=_agent_options(method, cfg))
            pre_metrics = _run_once(pretrain, pre_cfg)
            row = {"seed": seed}
            if get_agent(method).task == "classify":  # <<< a reconstruct task's heated model has no class scores >>>
                row |= {f"heated_{k}": v for k, v in _scores(pre_metrics).items()}
            curve = read_jsonl(pre_dir / "log.jsonl")
            if cfg.finetune_epochs:
                fine_metrics = _run_once(finetune, FinetuneConfig(
                    **_train_fields(cfg, skip=FINETUNE_OWN), seed=seed, out=str(fine_dir), epochs=cfg.finetune_epochs,
                    lr=cfg.finetune_lr, warmup_epochs=cfg.finetune_warmup * cfg.finetune_epochs,
                    init=str(pre_dir / "heated.pt")))
                row |= _scores(fine_metrics)
                curve += read_jsonl(fine_dir / "log.jsonl")
            else:
                row |= _scores(pre_metrics)
            rows.setdefault(method, []).append(row)
            curves.setdefault(method, []).append(curve)

    summary = {name: {"per_seed": per_seed,
                      # every compared metric lies in [0, 1]: a few seeds must not give a wider interval
                      **{k: mean_ci([r[k] for r in per_seed], bounds=(0.0, 1.0)) for k in per_seed[0] if k != "seed"}}
               for name, per_seed in rows.items()}
    result = {"config": to_plain(cfg), "split": "test", "equal_compute_epochs": total,
              "minutes": round((time.perf_counter() - start) / 60, 2), "methods": summary}
    write_json(out / "comparison.json", result)
    figures = {"curves": plot_training_curves(curves, out / "curves.png", boundary=cfg.epochs).name}
    gallery = _mask_gallery(cfg, out)
    if gallery:
        figures["masks"] = gallery.name
    for method in cfg.methods:  # <<< agents' own end-of-run figures (Intelligent Masking's gallery), seed 0
        own = out / method / "seed0" / "pretrain" / "gallery.png"
        if own.is_file():
            figures[f"{method} gallery"] = str(own.relative_to(out))  # >>>
    atomic_write_bytes(out / "comparison.md", render_markdown(result, figures).encode())
    return result


def _fmt(stat: dict) -> str:
    """mean ± half-width; [low, high] where clipping to [0, 1] made the interval lopsided; the mean
    alone where there is no interval (one seed): never a "± 0.0000" that claims certainty."""
    if stat["mean"] is None:
        return "n/a"
    mean, low, high = stat["mean"], stat.get("low"), stat.get("high")
    if low is None or high is None:
        return f"{mean:.4f}"
    if abs((high - mean) - (mean - low)) > 5e-5:
        return f"{mean:.4f} [{low:.4f}, {high:.4f}]"
    return f"{mean:.4f} ± {high - mean:.4f}"


def render_markdown(result: dict, figures: dict[str, str]) -> str:
    """comparison.md: the equal-compute table first, the reference's unequal view second."""
    cfg = result["config"]
    methods = result["methods"]
    header = "| method | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
    equal = [m for m in methods if "reference view" not in m]
    lines = [f"# Comparison on {', '.join(cfg['data'])} ({cfg['model']}, {cfg['seeds']} seed(s))", "",
             f"Test split, mean ± half-width of the 95% t-interval over seeds ([low, high] where clipped to [0, 1]; "
             f"the mean alone with one seed). Methods: {cfg['epochs']} pretraining + "
             f"{cfg['finetune_epochs']} fine-tuning epochs; plain: {result['equal_compute_epochs']} epochs (equal compute).",
             f"Wall time: {result['minutes']} min.", "", "## Equal compute", "", header.rstrip("\n")]
    lines += [f"| {m} | " + " | ".join(_fmt(methods[m][k]) for k in METRICS) + " |" for m in equal]
    short = [m for m in methods if "reference view" in m]
    if short:
        lines += ["", "## The reference's view (baseline trained for the pretraining epochs only)", "", header.rstrip("\n")]
        lines += [f"| {m} | " + " | ".join(_fmt(methods[m][k]) for k in METRICS) + " |" for m in short + [
            m for m in equal if not m.startswith("plain")]]
    heated = [m for m in equal if f"heated_{METRICS[0]}" in methods[m]]
    if heated:
        lines += ["", "## Heated models before fine-tuning", "", header.rstrip("\n")]
        lines += [f"| {m} | " + " | ".join(_fmt(methods[m][f'heated_{k}']) for k in METRICS) + " |" for m in heated]
    lines += ["", "## Figures", ""] + [f"![{name}]({file})" for name, file in figures.items()] + [""]
    return "\n".join(lines)


def _mask_gallery(cfg: CompareConfig, out: Path, n: int = 6) -> Path | None:
    """Validation images beside the masks sampled by each masking method's seed-0 agent."""
    methods = [m for m in cfg.methods if m != "plain"]
    if not methods:
        return None
    pool = build_pool(cfg.data, cfg.image_size, cfg.channels, cache_dir=cfg.cache_dir)
    val = pool.splits["val"]
    index = torch.linspace(0, len(val) - 1, n).long()
    x_u8 = val.load(index)  # (n, C, S, S)
    x = Augment(pool.image_size, train=False)(x_u8, None)
    rows = {}
    for method in methods:
        agent = get_agent(method).build(pool.image_size, pool.channels, seed=0, options=cfg.method_options.get(method))
        policy_file = out / method / "seed0" / "pretrain" / "policy.pt"
        if policy_file.is_file():
            agent.load_state_dict(load_checkpoint(policy_file)["agent"])
        agent.eval()
        sampled = agent.sample_masks(x, torch.Generator().manual_seed(0))
        if sampled is not None:
            rows[method] = sampled["mask"][:, 0].numpy()
    if not rows:
        return None
    images = (x_u8.float() / 255).permute(0, 2, 3, 1).numpy()
    images = images[..., 0] if images.shape[-1] == 1 else images
    titles = [pool.classes[int(c)] for c in val.labels[index]]
    return plot_mask_gallery(images, rows, out / "masks.png", titles)
