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

import contextlib
import contextvars
import dataclasses
import fcntl
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlmask.agents import AGENTS, get_agent
from rlmask.agents.registry import same_agent_options
from rlmask.config import coerce_all, option
from rlmask.data import DEFAULT_MEAN, DEFAULT_STD, Augment, build_pool
from rlmask.data.options import DataOptions
from rlmask.errors import UserError
from rlmask.evaluate.metrics import SUMMARY_METRICS, mean_ci
from rlmask.evaluate.paired import paired_bootstrap, paired_seed_differences, verdict
from rlmask.experiments.transfer import TransferConfig, parse_shots, run_transfer, write_transfer
from rlmask.io import atomic_write_bytes, load_checkpoint, read_json, read_jsonl, to_plain, write_json
from rlmask.report.figures import plot_differences, plot_mask_gallery, plot_training_curves
from rlmask.report.html import wall_time_line
from rlmask.train.loop import TrainConfig, fit
from rlmask.train.methods import FINETUNE_WARMUP, FinetuneConfig, PretrainConfig, finetune, pretrain
from rlmask.train.tasks import build_task

METRICS = SUMMARY_METRICS
DEFAULT_METHODS = ["plain", *(name for name, spec in AGENTS.items() if spec.in_default_comparison)]
# TrainConfig fields that are per sub-run, not shared by the comparison
PER_RUN = ("seed", "out", "resume", "epochs")
# FinetuneConfig keeps the reference's fine-tuning schedule: these are not taken from the comparison
FINETUNE_OWN = ("lr", "schedule", "warmup_epochs", "warmup_start", "init")
# The training options a method may set for its own pretraining run (--method-option METHOD:lr=0.001): the
# classifier's or encoder's optimiser and schedule, e.g. Intelligent Masking's Adam 1e-3 for its reconstructor.
# Its fine-tuning and every other method keep the comparison's.
PRETRAIN_OWN = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "warmup_start",
    "milestones",
    "gamma",
    "step_size",
    "clip_grad",
    "label_smoothing",
)
# The options a method may set for its own fine-tuning run (--method-option METHOD:finetune_lr=0.001): the same
# optimiser and schedule keys under a finetune_ prefix (warm-up as finetune_warmup, a fraction of its epochs),
# e.g. Adam for the fresh classification head behind Intelligent Masking's encoder. The others keep the
# comparison's --finetune-lr / --finetune-warmup and FinetuneConfig's schedule.
FINETUNE_PER_METHOD = tuple(f"finetune_{n}" for n in PRETRAIN_OWN if not n.startswith("warmup")) + ("finetune_warmup",)


@dataclass
class CompareConfig(TrainConfig):
    """Options of ``rlmask compare``: every ``rlmask train`` option (shared by every sub-run: plain training,
    pretraining and, except the learning-rate schedule, fine-tuning), and the comparison's own."""

    epochs: int = option(4, "pretraining epochs of each method")
    out: str = option("runs/compare", "output directory", metavar="DIR")
    finetune_epochs: int = option(1, "fine-tuning epochs after pretraining (plain gets epochs + finetune_epochs)")
    seeds: int = option(2, "number of seeds (0 .. seeds-1)")
    methods: list[str] = option(
        DEFAULT_METHODS,
        f"methods to compare: {', '.join(AGENTS)}; LABEL=METHOD adds a variant of METHOD under its own "
        "name (its options: --method-option LABEL:NAME=VALUE)",
        metavar="METHOD",
    )
    finetune_lr: float = option(1e-3, "fine-tuning learning rate (reference: 1e-3)")
    finetune_warmup: float = option(
        FINETUNE_WARMUP, "fine-tuning warm-up as a fraction of finetune_epochs (reference: 7 of 10)"
    )
    bootstrap_resamples: int = option(2000, "resamples of the paired bootstrap over the test images (per run)")
    transfer_to: list[str] = option(
        [],
        "unseen downstream task(s): after the in-domain runs, every method's final "
        "backbone and plain's are transferred to each (paired by seed and subset)",
        metavar="SPEC",
    )
    leave_out: str | None = option(
        None,
        "leave-one-source-out: pretrain on every --data source but this one, then "
        "transfer to it (a --data spec, or its file name)",
        metavar="SPEC",
    )
    shots: str = option("16,64,256", "transfer: training images per class of the downstream task (comma list, 'all')")
    transfer_mode: list[str] = option(
        ["linear"], "transfer: linear (frozen backbone) and/or finetune", choices=["linear", "finetune"], metavar="MODE"
    )
    transfer_repeats: int = option(3, "transfer: subsets per shot count and seed")
    method_option: list[str] = option(
        [],
        "an option of one method, METHOD:NAME=VALUE (repeatable); a config file may instead hold a section per method",
        metavar="METHOD:NAME=VALUE",
    )
    # {method: {option: value}} from the config file's per-method sections and --method-option: the agent's
    # options, and (method_train) the PRETRAIN_OWN options of the method's pretraining run
    method_options: dict = field(default_factory=dict, metadata={"cli": False, "help": "per-method options"})
    method_train: dict = field(default_factory=dict, metadata={"cli": False, "help": "per-method pretraining options"})
    # {method: {option: value}}: the FINETUNE_PER_METHOD options of the method's fine-tuning run
    method_finetune: dict = field(default_factory=dict, metadata={"cli": False, "help": "per-method fine-tuning"})
    # {label: agent} of the compared methods; a label differs from its agent for a variant (LABEL=METHOD)
    agents: dict = field(default_factory=dict, metadata={"cli": False, "help": "agent of each method"})

    def agent_of(self, method: str) -> str:
        """The registered agent behind a compared method (itself, or the METHOD of a LABEL=METHOD variant)."""
        return self.agents.get(method, method)

    def validate(self) -> None:
        super().validate()
        if not (self.agents and list(self.agents) == self.methods):  # not parsed yet (validate may run twice)
            self.agents = parse_methods(self.methods)
            self.methods = list(self.agents)
        if self.seeds < 1 or self.finetune_epochs < 0:
            raise UserError("--seeds must be >= 1, --finetune-epochs >= 0")
        if self.bootstrap_resamples < 100:
            raise UserError(f"--bootstrap-resamples {self.bootstrap_resamples}: must be at least 100")
        if self.leave_out is not None:
            matches = [d for d in self.data if d == self.leave_out or Path(d).name == self.leave_out]
            if len(matches) != 1 or len(self.data) < 2:
                raise UserError(
                    f"--leave-out {self.leave_out}: must name exactly one of the --data sources "
                    f"({', '.join(self.data)}), and at least one must remain"
                )
        if self.transfer_to or self.leave_out:
            parse_shots(self.shots)
            if self.transfer_repeats < 1:
                raise UserError(f"--transfer-repeats {self.transfer_repeats}: must be at least 1")
        options, train = {}, {m: dict(v) for m, v in self.method_train.items()}
        fine = {m: dict(v) for m, v in self.method_finetune.items()}
        for method, values in self.method_options.items():  # a config file's sections: split them the same way
            for name, value in values.items():
                if not self._training_option(method, name, value, train, fine, f"--config: [{method}]"):
                    options.setdefault(method, {})[name] = value
        for item in self.method_option:
            method, sep, assignment = item.partition(":")
            name, eq, value = assignment.partition("=")
            if not (sep and eq and name):
                raise UserError(f"--method-option {item}: expected METHOD:NAME=VALUE")
            if method not in self.agents:
                raise UserError(f"--method-option {item}: {method} is not among --methods ({', '.join(self.agents)})")
            spec = get_agent(self.agent_of(method))
            name = name.replace("-", "_")
            if self._training_option(method, name, value, train, fine, f"--method-option {item}"):
                continue
            if spec.options is None:
                raise UserError(f"--method-option {item}: method {method} takes no options")
            known = {f.name for f in dataclasses.fields(spec.options)}
            if name not in known:
                raise UserError(
                    f"--method-option {item}: --{name.replace('_', '-')} is not an option of {method} "
                    f"(nor one of its training options: {', '.join(PRETRAIN_OWN)}, each also as finetune_NAME)"
                )
            options.setdefault(method, {}).update(coerce_all(spec.options, {name: value}, f"--method-option {item}"))
        for method, values in options.items():
            # unknown or out-of-range options fail now
            get_agent(self.agent_of(method), "--config").make_options(values)
        # <<< a method pretraining without labels (reconstruct task) is scored after fine-tuning only
        unlabelled = [m for m in self.methods if get_agent(self.agent_of(m)).task != "classify"]
        if unlabelled and self.finetune_epochs == 0:
            raise UserError(
                f"--finetune-epochs 0: {', '.join(unlabelled)} pretrain(s) without labels and need "
                "fine-tuning epochs to be scored"
            )  # >>>
        self.method_options, self.method_train, self.method_finetune = options, train, fine
        for method in {**train, **fine}:  # e.g. --method-option context-dqn:optimizer=adam context-dqn:lr=1e-3
            own = [*train.get(method, {}), *fine.get(method, {})]
            where = f"--method-option {method}:{','.join(own)}"
            if method == "plain":
                flag = own[0].replace("_", "-")
                raise UserError(f"{where}: plain trains with the comparison's own options (--{flag})")
            if method in fine and self.finetune_epochs == 0:
                raise UserError(f"{where}: --finetune-epochs 0, so {method} has no fine-tuning to set")
            try:
                TrainConfig(**(_train_fields(self) | train.get(method, {})), epochs=self.epochs).validate()
                if method in fine:
                    _finetune_config(self, method, 0, Path(self.out)).validate()
            except UserError as err:
                raise UserError(f"{where}: {err}") from None

    def _training_option(self, method: str, name: str, value, train: dict, fine: dict, where: str) -> bool:
        """File ``name=value`` under ``train`` (a PRETRAIN_OWN option of the method's pretraining) or ``fine``
        (a FINETUNE_PER_METHOD one, prefix dropped) where it is one and not the agent's own; whether it was."""
        if _agent_has(self.agent_of(method), name):
            return False
        if name in PRETRAIN_OWN:
            train.setdefault(method, {}).update(coerce_all(TrainConfig, {name: value}, where))
        elif name == "finetune_warmup":
            fine.setdefault(method, {}).update(coerce_all(CompareConfig, {name: value}, where))
        elif name in FINETUNE_PER_METHOD:
            values = coerce_all(FinetuneConfig, {name.removeprefix("finetune_"): value}, where)
            fine.setdefault(method, {}).update({f"finetune_{k}": v for k, v in values.items()})
        else:
            return False
        return True


def _agent_has(agent: str, name: str) -> bool:
    """Whether ``agent``'s own options hold ``name`` (then a --method-option of that name is the agent's)."""
    options = get_agent(agent).options
    return options is not None and name in {f.name for f in dataclasses.fields(options)}


def parse_methods(items: list[str]) -> dict[str, str]:
    """``--methods`` as {label: agent}: "plain,apga" and "plain apga" are the same list; ``LABEL=METHOD`` is a
    variant of a registered METHOD under its own label (a folder name, so letters, digits, ``-``, ``_``, ``.``)."""
    agents: dict[str, str] = {}
    for entry in (m for item in items for m in item.split(",") if m):
        label, sep, agent = entry.partition("=")
        agent = agent if sep else label
        get_agent(agent, "--methods")
        if sep and (label in AGENTS or not label or not all(c.isalnum() or c in "-_." for c in label)):
            raise UserError(
                f"--methods {entry}: a variant's label must be a new name of letters, digits, '-', '_' or '.'"
            )
        if label in agents:
            raise UserError(f"--methods: {label} is listed twice")
        agents[label] = agent
    return agents


def _agent_options(method: str, cfg: CompareConfig, values: dict | None = None) -> dict:
    """Every option of ``method``'s agent as plain data: its defaults, its preset, the comparison's values
    (``values`` when given)."""
    options = get_agent(cfg.agent_of(method)).make_options(
        values if values is not None else cfg.method_options.get(method)
    )
    return to_plain(options) if options is not None else {}


def _train_fields(cfg: CompareConfig, skip: tuple[str, ...] = ()) -> dict:
    """The comparison's ``rlmask train`` options, shared by its sub-runs."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in PER_RUN + skip}


REUSE_KEYS = (
    "data",
    "model",
    "epochs",
    "seed",
    "image_size",
    *PRETRAIN_OWN,  # the optimiser and schedule: a run trained with others is not the same run
    "batch_size",
    "method",
    "train_per_class",
    "eval_per_class",
    "init",
    "agent",
)


class _Busy(Exception):
    """A sub-run that another ``compare`` process is running now."""


# False in the first pass over the sub-runs: one that another process holds is left for later (_Busy)
_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("wait_for_busy_sub_runs", default=True)


@contextlib.contextmanager
def _claim(folder: Path):
    """Hold ``folder`` for this process: an exclusive lock on ``.NAME.lock`` beside it, released on exit or
    when the process dies, so that several ``compare`` processes on one --out share the sub-runs. Waits for
    another holder, or raises _Busy in the first pass."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if _WAIT.get() else fcntl.LOCK_NB))
        except BlockingIOError:
            raise _Busy(folder) from None
        yield


def _same_agent(old: dict, new: dict) -> bool:
    return same_agent_options(new.get("method"), old.get("agent"), new.get("agent"))


def _run_once(run, run_cfg, needs: tuple[str, ...] = ()) -> dict:
    """Run ``run(run_cfg)`` unless its folder already holds metrics.json (and the files in ``needs``, which a
    later sub-run reads); resume from last.pt if present.

    A finished run whose needed files are gone (a study restored from its small files, checkpoints deleted to
    save space) is trained again: from its last.pt where one is left (the final one, or one of a retrain that
    stopped partway), else from its start. Runs are seeded and resume exactly, so it comes out the same.
    A folder written with other options is an error, never silently reused. The folder is held (``_claim``)
    meanwhile, so another process of the same comparison never runs it at the same time.
    """
    out = Path(run_cfg.out)
    with _claim(out):
        if (out / "config.json").is_file():
            old, new = read_json(out / "config.json", "--out: sub-run"), to_plain(run_cfg)
            changed = [
                k
                for k in REUSE_KEYS
                if new.get(k) is not None
                and k in old
                and not (_same_agent(old, new) if k == "agent" else old[k] == new[k])
            ]
            if changed:
                raise UserError(
                    f"--out: {out} holds a run with other options ({', '.join(changed)}); choose another --out or delete it"
                )
        if _finished(out, needs):
            return read_json(out / "metrics.json", "--out: sub-run")
        if (out / "last.pt").is_file():
            run_cfg = dataclasses.replace(run_cfg, resume=str(out / "last.pt"))
        return run(run_cfg)


def _finished(folder: Path, needs: tuple[str, ...] = ()) -> bool:
    """Whether the sub-run in ``folder`` is done and still holds the files in ``needs``."""
    return all((folder / name).is_file() for name in ("metrics.json", *needs))


def _scores(metrics: dict) -> dict:
    split = metrics.get("test") or metrics["val"]
    return {k: split[k] for k in METRICS}


# --- APGA additions (issue 11): plain checkpoints for agents that need one, test-time augmentation -----------
def _plain_run(cfg: CompareConfig, seed: int, out: Path, needs: tuple[str, ...] = ()) -> Path:
    """The equal-compute plain run of ``seed`` (trained now unless already done); its folder."""
    folder = out / "plain" / f"seed{seed}"
    total = cfg.epochs + cfg.finetune_epochs
    _run_once(fit, TrainConfig(**_train_fields(cfg), seed=seed, out=str(folder), epochs=total), needs)
    return folder


def _method_values(
    cfg: CompareConfig, method: str, seed: int, out: Path, plain_needs: tuple[str, ...] = ()
) -> dict | None:
    """The comparison's options of ``method``, with its plain-checkpoint option (if it has one and the user did
    not set it) filled with the same seed's plain run's last.pt (the plain run trained again where it lacks
    ``plain_needs``)."""
    values = cfg.method_options.get(method)
    name = get_agent(cfg.agent_of(method)).plain_checkpoint_option
    if name and not (values or {}).get(name):
        values = dict(values or {}) | {name: str(_plain_run(cfg, seed, out, plain_needs) / "last.pt")}
    return values


def _tta_scores(metrics: dict) -> dict:
    """``tta_METRIC`` of the pretraining run's test-time-augmentation view, where the agent has one."""
    split = metrics.get("test_tta") or metrics.get("val_tta")
    return {f"tta_{k}": split[k] for k in METRICS} if split else {}


# --- end of APGA additions ------------------------------------------------------------------------------------


def _method_runs(cfg: CompareConfig, out: Path, seed: int, method: str) -> list[tuple[str, dict, list[dict]]]:
    """The sub-runs of ``method`` for ``seed`` (each trained unless done): [(table label, scores, log records)]."""
    total = cfg.epochs + cfg.finetune_epochs
    if method == "plain":
        found = []
        for label, epochs in ((f"plain ({total} ep)", total), (f"plain ({cfg.epochs} ep, reference view)", cfg.epochs)):
            folder = out / ("plain" if epochs == total else "plain-short") / f"seed{seed}"
            run_cfg = TrainConfig(**_train_fields(cfg), seed=seed, out=str(folder), epochs=epochs)
            metrics = _run_once(fit, run_cfg)
            found.append((label, {"seed": seed, **_scores(metrics)}, read_jsonl(folder / "log.jsonl")))
            if total == cfg.epochs:
                break
        return found
    pre_dir, fine_dir = out / method / f"seed{seed}" / "pretrain", out / method / f"seed{seed}" / "finetune"
    # a pretraining still to run (or to run again for the heated model its fine-tuning reads) needs the plain
    # model of an agent that takes one (APGA addition: gradcam-mask)
    pre_needs = ("heated.pt",) if cfg.finetune_epochs and not _finished(fine_dir) else ()
    values = _method_values(cfg, method, seed, out, () if _finished(pre_dir, pre_needs) else ("last.pt",))
    pre_cfg = PretrainConfig(
        **(_train_fields(cfg) | cfg.method_train.get(method, {})),
        seed=seed,
        out=str(pre_dir),
        epochs=cfg.epochs,
        method=cfg.agent_of(method),
        agent=_agent_options(method, cfg, values),
    )
    pre_metrics = _run_once(pretrain, pre_cfg, pre_needs)
    row = {"seed": seed}
    if get_agent(cfg.agent_of(method)).task == "classify":  # a reconstruct task's heated model has no class scores
        row |= {f"heated_{k}": v for k, v in _scores(pre_metrics).items()}
        row |= {f"heated_{k}": v for k, v in _tta_scores(pre_metrics).items()}  # APGA addition
    curve = read_jsonl(pre_dir / "log.jsonl")
    if cfg.finetune_epochs:
        fine_metrics = _run_once(finetune, _finetune_config(cfg, method, seed, out))
        row |= _scores(fine_metrics)
        curve += read_jsonl(fine_dir / "log.jsonl")
    else:
        row |= _scores(pre_metrics)
    return [(method, row, curve)]


def _finetune_config(cfg: CompareConfig, method: str, seed: int, out: Path) -> FinetuneConfig:
    """The fine-tuning run of ``method``'s heated model: the comparison's options but for FINETUNE_OWN, which
    are FinetuneConfig's (the reference's) or --finetune-lr / --finetune-warmup, or the method's own
    (FINETUNE_PER_METHOD)."""
    own = {k.removeprefix("finetune_"): v for k, v in cfg.method_finetune.get(method, {}).items()}
    warmup = own.pop("warmup", cfg.finetune_warmup)
    folder = out / method / f"seed{seed}"
    return FinetuneConfig(
        **(_train_fields(cfg, skip=FINETUNE_OWN) | {"lr": cfg.finetune_lr} | own),
        seed=seed,
        out=str(folder / "finetune"),
        epochs=cfg.finetune_epochs,
        warmup_epochs=warmup * cfg.finetune_epochs,
        init=str(folder / "pretrain" / "heated.pt"),
    )


def run_comparison(cfg: CompareConfig) -> dict:
    """Run every method for every seed; write comparison.json, comparison.md and the figures."""
    cfg.validate()
    if cfg.leave_out:  # pretrain on the other sources, transfer to the one left out
        left = next(d for d in cfg.data if d == cfg.leave_out or Path(d).name == cfg.leave_out)
        cfg = dataclasses.replace(
            cfg, data=[d for d in cfg.data if d != left], transfer_to=[*cfg.transfer_to, left], leave_out=left
        )
    out = Path(cfg.out)
    start = time.perf_counter()
    total = cfg.epochs + cfg.finetune_epochs
    # Seed by seed, method by method; a sub-run another process of this comparison holds is left for a second
    # pass, which waits for it (then finds it finished), so that processes sharing --out split the work.
    done: dict[tuple[int, str], list[tuple[str, dict, list[dict]]]] = {}
    later = []
    token = _WAIT.set(False)
    try:
        for seed in range(cfg.seeds):
            for method in cfg.methods:
                try:
                    done[seed, method] = _method_runs(cfg, out, seed, method)
                except _Busy:
                    later.append((seed, method))
    finally:
        _WAIT.reset(token)
    for seed, method in later:
        done[seed, method] = _method_runs(cfg, out, seed, method)
    rows: dict[str, list[dict]] = {}
    curves: dict[str, list[list[dict]]] = {}
    for seed in range(cfg.seeds):
        for method in cfg.methods:
            for label, row, curve in done[seed, method]:
                rows.setdefault(label, []).append(row)
                curves.setdefault(label, []).append(curve)

    summary = {
        name: {
            "per_seed": per_seed,
            # every compared metric lies in [0, 1]: a few seeds must not give a wider interval
            **{k: mean_ci([r[k] for r in per_seed], bounds=(0.0, 1.0)) for k in per_seed[0] if k != "seed"},
        }
        for name, per_seed in rows.items()
    }
    result = {
        "config": to_plain(cfg),
        "split": "test",
        "equal_compute_epochs": total,
        "minutes": round((time.perf_counter() - start) / 60, 2),  # this invocation's wall time
        # training epochs' time summed over seeds (no validation, evaluation or transfer); unlike "minutes" it
        # does not fall to 0 when finished sub-runs are reused
        "train_minutes": {
            label: round(sum(r.get("train_seconds", 0.0) for c in cs for r in c) / 60, 2)
            for label, cs in curves.items()
        },
        "methods": summary,
        "paired": paired_against_plain(cfg, out, rows),
        "transfer": transfer_against_plain(cfg, out) if cfg.transfer_to else {},
    }
    write_json(out / "comparison.json", result)
    figures = {}
    differences = difference_rows(result)
    if differences:
        figures["differences"] = plot_differences(
            differences,
            out / "differences.png",
            "method - plain: in-domain at equal compute, then per unseen task; 95% intervals",
        ).name
    figures["curves"] = plot_training_curves(curves, out / "curves.png", boundary=cfg.epochs).name
    gallery = _mask_gallery(cfg, out)
    if gallery:
        figures["masks"] = gallery.name
    for method in cfg.methods:  # <<< agents' own end-of-run figures (Intelligent Masking's gallery), seed 0
        own = out / method / "seed0" / "pretrain" / "gallery.png"
        if own.is_file():
            figures[f"{method} gallery"] = str(own.relative_to(out))  # >>>
    atomic_write_bytes(out / "comparison.md", render_markdown(result, figures).encode())
    return result


PAIRED_METRICS = ("macro_f1", "balanced_accuracy", "auroc")  # the table leads with these differences


def difference_rows(result: dict) -> dict[str, dict[str, dict]]:
    """The rows of the differences figure, {label: {metric: {mean, low, high, verdict}}}: each method in-domain,
    then each method on each unseen task, mode and shot count."""
    rows = dict(result.get("paired") or {})
    for key, entry in (result.get("transfer") or {}).items():
        for method, by_shots in entry["methods"].items():
            for n, stats in by_shots.items():
                rows[f"{method}: {key}, {n}/class"] = stats
    return rows


def _final_folder(cfg: CompareConfig, out: Path, method: str, seed: int) -> Path:
    """The run folder of a method's final model for one seed (fine-tuned, or heated without fine-tuning)."""
    if method == "plain":
        return out / "plain" / f"seed{seed}"
    return out / method / f"seed{seed}" / ("finetune" if cfg.finetune_epochs else "pretrain")


def _predictions(folder: Path) -> dict | None:
    path = folder / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def paired_against_plain(cfg: CompareConfig, out: Path, rows: dict[str, list[dict]]) -> dict:
    """Every method against plain training at equal compute, paired by seed and by test image.

    Per method and metric: the per-seed differences to plain (same seed) with their mean and 95%
    t-interval, and per seed a paired bootstrap over the test images (the same resampled images for
    both models). The verdict rests on the seeds' interval when there are two seeds or more, else on
    the single run's bootstrap interval (``basis`` says which).
    """
    plain_label = f"plain ({cfg.epochs + cfg.finetune_epochs} ep)"
    if plain_label not in rows:
        return {}
    plain = {r["seed"]: r for r in rows[plain_label]}
    paired = {}
    for method in (m for m in cfg.methods if m != "plain"):
        mine = {r["seed"]: r for r in rows[method]}
        predictions = {
            s: (_predictions(_final_folder(cfg, out, method, s)), _predictions(_final_folder(cfg, out, "plain", s)))
            for s in mine
            if s in plain
        }
        entry = {}
        for k in PAIRED_METRICS:
            seeds = paired_seed_differences({s: r[k] for s, r in mine.items()}, {s: r[k] for s, r in plain.items()})
            boot = []
            for s, (a, b) in predictions.items():
                if a is None or b is None or not np.array_equal(a["labels"], b["labels"]):
                    continue
                res = paired_bootstrap(
                    k, a["probs"], b["probs"], a["labels"], n_resamples=cfg.bootstrap_resamples, seed=s
                )
                boot.append(
                    {
                        "seed": s,
                        "difference": res["difference"],
                        "low": res["low"],
                        "high": res["high"],
                        "verdict": verdict(res["low"], res["high"]),
                    }
                )
            if seeds["n"] >= 2:
                low, high, basis = seeds["low"], seeds["high"], f"t-interval over {seeds['n']} seeds"
            elif len(boot) == 1:
                low, high, basis = boot[0]["low"], boot[0]["high"], "paired bootstrap over test images (1 seed)"
            else:
                low = high = basis = None
            entry[k] = {
                "mean": seeds["mean"],
                "low": low,
                "high": high,
                "basis": basis,
                "verdict": verdict(low, high),
                "per_seed": dict(zip(seeds["seeds"], seeds["differences"])),
                "bootstrap": boot,
            }
        paired[method] = entry
    return paired


def _task_name(spec: str) -> str:
    """A short, file-system-safe name of a downstream task spec."""
    name = Path(spec).stem if not spec.startswith(("synthetic", "medmnist:", "csv:")) else spec
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _transfer_once(cfg: CompareConfig, out: Path, folder: Path, task: str, mode: str, seed: int, methods) -> dict:
    """One seed's transfer of plain and every method to ``task``: its transfer.json, where one exists, with the
    methods it lacks (added to the comparison since) transferred and joined to it."""
    names = ["plain", *methods]
    done = read_json(folder / "transfer.json", "--out: transfer run") if (folder / "transfer.json").is_file() else None
    if done is not None:
        was = done.get("config", {})
        if parse_shots(str(was.get("shots"))) != parse_shots(cfg.shots) or was.get("repeats") != cfg.transfer_repeats:
            raise UserError(
                f"--shots/--transfer-repeats: {folder} was transferred with shots {was.get('shots')} and "
                f"{was.get('repeats')} repeats, not {cfg.shots} and {cfg.transfer_repeats}; choose another --out"
            )
    missing = [m for m in names if done is None or m not in done.get("results", {})]
    if not missing:
        return done
    # A checkpoint's scores depend only on the seed's subsets and run seeds (drawn from the seed and the task's
    # labels), never on the other checkpoints: methods added later transfer on their own, on the same subsets.
    part_dir = folder if done is None else folder / ".added"
    part = run_transfer(
        TransferConfig(
            checkpoints=[str(_final_folder(cfg, out, m, seed) / "last.pt") for m in missing],
            label=missing,
            data=[task],
            shots=cfg.shots,
            repeats=cfg.transfer_repeats,
            mode=mode,
            seed=seed,
            out=str(part_dir),
            device=cfg.device,
            amp=cfg.amp,
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
            eval_per_class=cfg.eval_per_class,
            trust_checkpoint=cfg.trust_checkpoint,
        )
    )
    if done is None:
        return part
    labels = [*done["checkpoints"], *missing]
    config = done["config"] | {
        "checkpoints": [*done["config"]["checkpoints"], *part["config"]["checkpoints"]],
        "label": labels,
    }
    merged = done | {
        "config": config,
        "checkpoints": labels,
        "checkpoint_info": done["checkpoint_info"] | part["checkpoint_info"],
        "results": done["results"] | part["results"],
    }
    write_transfer(merged, folder)
    shutil.rmtree(part_dir, ignore_errors=True)
    return merged


def transfer_against_plain(cfg: CompareConfig, out: Path) -> dict:
    """Every method's final backbone and plain's, transferred to each unseen task on identical subsets.

    Per seed, one ``transfer`` run per task and mode holds every method: all see the same class-balanced
    subsets and head initialisations. Pairs (same seed, same subset) give per task, mode and shot count
    the difference method - plain with its 95% t-interval over the pairs and a verdict.
    """
    methods = [m for m in cfg.methods if m != "plain"]
    results: dict = {}
    for task in cfg.transfer_to:
        for mode in cfg.transfer_mode:
            key = f"{_task_name(task)} ({mode})"
            per_seed = []
            for seed in range(cfg.seeds):
                folder = out / "transfer" / f"{_task_name(task)}-{mode}" / f"seed{seed}"
                with _claim(folder):  # another process of the comparison may be running it: wait for it
                    done = _transfer_once(cfg, out, folder, task, mode, seed, methods)
                per_seed.append(done["results"])
            shots = list(per_seed[0]["plain"])
            table = {}
            for method in methods:
                table[method] = {}
                for n in shots:
                    table[method][n] = {
                        k: transfer_difference(
                            [  # per seed, the (method, plain) pairs of its subsets
                                [(r[k], p[k]) for r, p in zip(res[method][n]["repeats"], res["plain"][n]["repeats"])]
                                for res in per_seed
                            ]
                        )
                        for k in PAIRED_METRICS
                    }
            results[key] = {"task": task, "mode": mode, "methods": table}
    return results


def transfer_difference(by_seed: list[list[tuple[float | None, float | None]]]) -> dict:
    """Method - plain on one task and shot count from ``by_seed[seed]`` = that seed's (method, plain) scores,
    one pair per subset: {"mean", "low", "high", "n", "verdict"} of the t-interval over all (seed, subset)
    pairs, and under "over_seeds" the same with the seed as the unit (each seed's mean over its subsets).

    The subsets of one seed share its pretrained backbone, so the pairs are not independent draws of
    pretraining: the over-seeds interval is wider, and it is the one that speaks for another pretraining run.
    """

    def summary(stat: dict) -> dict:
        return {k: stat[k] for k in ("mean", "low", "high", "n")} | {"verdict": verdict(stat["low"], stat["high"])}

    def means(pairs: list[tuple]) -> tuple[float | None, float | None]:
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            return None, None
        return sum(a for a, _ in pairs) / len(pairs), sum(b for _, b in pairs) / len(pairs)

    pairs = [pair for seed_pairs in by_seed for pair in seed_pairs]
    seed_means = [means(seed_pairs) for seed_pairs in by_seed]
    return summary(paired_seed_differences([a for a, _ in pairs], [b for _, b in pairs])) | {
        "over_seeds": summary(paired_seed_differences([a for a, _ in seed_means], [b for _, b in seed_means]))
    }


def render_transfer(result: dict) -> list[str]:
    """Transfer to unseen tasks: method - plain per task, mode and shot count."""
    transfer = result.get("transfer") or {}
    if not transfer:
        return []
    lines = [
        "## Transfer to unseen tasks: method - plain",
        "",
        "Each method's final backbone and plain's, transferred on identical subsets; the interval is the "
        "t-interval over (seed, subset) pairs. The subsets of a seed share its pretrained backbone, so the last "
        f"column repeats Δ {PAIRED_METRICS[0]} with the seed as the unit (each seed's mean over its subsets): "
        "wider, and the one to trust for another pretraining run.",
        "",
    ]
    for key, entry in transfer.items():
        lines += [
            f"### {key}",
            "",
            "| method | shots | "
            + " | ".join(f"Δ {k}" for k in PAIRED_METRICS)
            + f" | Δ {PAIRED_METRICS[0]} over seeds |",
            "|---|---|" + "---|" * (len(PAIRED_METRICS) + 1),
        ]
        for method, by_shots in entry["methods"].items():
            for n, stats in by_shots.items():
                cells = [_diff_cell(stats[k]) for k in PAIRED_METRICS]
                over_seeds = stats[PAIRED_METRICS[0]].get("over_seeds")  # absent in comparisons before it
                cells.append(f"{_diff_cell(over_seeds)} (n={over_seeds['n']})" if over_seeds else "n/a")
                lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _diff_cell(stat: dict) -> str:
    """+0.0123 [-0.0100, +0.0346] better: a difference, its 95% interval (when there is one) and the verdict."""
    value = stat["mean"] if "mean" in stat else stat.get("difference")
    if value is None:
        return "n/a"
    interval = f" [{_signed(stat['low'])}, {_signed(stat['high'])}]" if stat["low"] is not None else ""
    return f"{_signed(value)}{interval} {stat['verdict']}"


def render_paired(result: dict) -> list[str]:
    """The lead of comparison.md: method - plain with intervals and verdicts."""
    paired = result.get("paired") or {}
    if not paired:
        return []
    lines = [
        "## Method - plain (equal compute)",
        "",
        "Difference of each method's fine-tuned model to plain training of the same seed, on the same test "
        "images; 95% interval and verdict (better / worse / no detectable difference). With two seeds or "
        "more the interval is the t-interval of the per-seed differences; with one seed, a paired bootstrap "
        "over the test images (percentiles, so within the metric's range).",
        "",
        "| method | " + " | ".join(f"Δ {k}" for k in PAIRED_METRICS) + " | interval |",
        "|---|" + "---|" * (len(PAIRED_METRICS) + 1),
    ]
    for method, entry in paired.items():
        basis = entry[PAIRED_METRICS[0]]["basis"] or "none"
        lines.append(f"| {method} | " + " | ".join(_diff_cell(entry[k]) for k in PAIRED_METRICS) + f" | {basis} |")
    boot_rows = [(m, b) for m, entry in paired.items() for b in entry[PAIRED_METRICS[0]]["bootstrap"]]
    if boot_rows:
        lines += [
            "",
            "### Per seed: paired bootstrap over the test images",
            "",
            "| method | seed | " + " | ".join(f"Δ {k}" for k in PAIRED_METRICS) + " |",
            "|---|---|" + "---|" * len(PAIRED_METRICS),
        ]
        for method, entry in paired.items():
            for i, b in enumerate(entry[PAIRED_METRICS[0]]["bootstrap"]):
                cells = [_diff_cell(entry[k]["bootstrap"][i]) for k in PAIRED_METRICS]
                lines.append(f"| {method} | {b['seed']} | " + " | ".join(cells) + " |")
    return lines + [""]


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


def _own_recipes(cfg: dict) -> list[str]:
    """A line naming the methods that train with their own optimiser or schedule (--method-option), if any."""
    own = []
    for method in cfg.get("methods", []):
        parts = [
            f"{stage} {', '.join(f'{k.removeprefix(prefix)}={v}' for k, v in values.items())}"
            for stage, values, prefix in (
                ("pretraining", cfg.get("method_train", {}).get(method), ""),
                ("fine-tuning", cfg.get("method_finetune", {}).get(method), "finetune_"),
            )
            if values
        ]
        if parts:
            own.append(f"{method} ({'; '.join(parts)})")
    return [f"Methods with their own training options, all else as the comparison's: {'; '.join(own)}."] if own else []


def render_markdown(result: dict, figures: dict[str, str]) -> str:
    """comparison.md: the equal-compute table first, the reference's unequal view second."""
    cfg = result["config"]
    methods = result["methods"]
    header = "| method | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
    equal = [m for m in methods if "reference view" not in m]
    lines = [
        f"# Comparison on {', '.join(cfg['data'])} ({cfg['model']}, {cfg['seeds']} seed(s))",
        "",
        f"Test split, mean ± half-width of the 95% t-interval over seeds ([low, high] where clipped to [0, 1]; "
        f"the mean alone with one seed). Methods: {cfg['epochs']} pretraining + "
        f"{cfg['finetune_epochs']} fine-tuning epochs; plain: {result['equal_compute_epochs']} epochs (equal compute).",
        wall_time_line(result),
        *_own_recipes(cfg),
        "",
        *render_paired(result),
        *render_transfer(result),
        "## Equal compute",
        "",
        header.rstrip("\n"),
    ]
    lines += [f"| {m} | " + " | ".join(_fmt(methods[m][k]) for k in METRICS) + " |" for m in equal]
    short = [m for m in methods if "reference view" in m]
    if short:
        lines += [
            "",
            "## The reference's view (baseline trained for the pretraining epochs only)",
            "",
            header.rstrip("\n"),
        ]
        lines += [
            f"| {m} | " + " | ".join(_fmt(methods[m][k]) for k in METRICS) + " |"
            for m in short + [m for m in equal if not m.startswith("plain")]
        ]
    heated = [m for m in equal if f"heated_{METRICS[0]}" in methods[m]]
    if heated:
        lines += ["", "## Heated models before fine-tuning", "", header.rstrip("\n")]
        lines += [f"| {m} | " + " | ".join(_fmt(methods[m][f"heated_{k}"]) for k in METRICS) + " |" for m in heated]
    tta = [m for m in equal if f"heated_tta_{METRICS[0]}" in methods[m]]  # APGA addition: test-time augmentation
    if tta:
        lines += [
            "",
            "## Heated models with test-time augmentation (mean softmax of the clean and kept image)",
            "",
            header.rstrip("\n"),
        ]
        lines += [
            f"| {m} (TTA) | " + " | ".join(_fmt(methods[m][f"heated_tta_{k}"]) for k in METRICS) + " |" for m in tta
        ]
    lines += ["", "## Figures", ""] + [f"![{name}]({file})" for name, file in figures.items()] + [""]
    return "\n".join(lines)


def _mask_gallery(cfg: CompareConfig, out: Path, n: int = 6) -> Path | None:
    """Validation images beside the masks sampled by each masking method's seed-0 agent."""
    methods = [m for m in cfg.methods if m != "plain"]
    if not methods:
        return None
    pool = build_pool(
        cfg.data, cfg.image_size, cfg.channels, cache_dir=cfg.cache_dir, options=DataOptions.from_config(cfg), seed=0
    )  # the seed-0 runs' split
    val = pool.splits["val"]
    index = torch.linspace(0, len(val) - 1, n).long()
    x_u8 = val.load(index)  # (n, C, S, S)
    rows, extra = {}, {}
    for method in methods:
        spec = get_agent(cfg.agent_of(method))
        values = _method_values(cfg, method, 0, out)
        plain_file = (values or {}).get(spec.plain_checkpoint_option or "")
        if plain_file and not Path(plain_file).is_file():  # kept without checkpoints: the agent cannot be built
            print(f"warning: masks.png: {method} left out ({plain_file} is missing)", file=sys.stderr)
            continue
        agent = spec.build(pool.image_size, pool.channels, seed=0, options=values)
        # the images as the agent saw them in training: its task may scale them otherwise (context's reference [-1, 1])
        task = build_task(spec.task, **spec.task_options(spec.make_options(values)))
        mean, std = getattr(task, "normalisation", (DEFAULT_MEAN, DEFAULT_STD))
        x = Augment(pool.image_size, train=False, mean=mean, std=std)(x_u8, None)
        policy_file = out / method / "seed0" / "pretrain" / "policy.pt"
        if policy_file.is_file():
            agent.load_state_dict(load_checkpoint(policy_file)["agent"])
        elif agent.state_dict():  # a run kept without its checkpoints: an untrained agent's masks would mislead
            print(f"warning: masks.png: {method} left out ({policy_file} is missing)", file=sys.stderr)
            continue
        agent.eval()
        sampled = agent.sample_masks(x, torch.Generator().manual_seed(0))
        if sampled is not None:
            rows[method] = sampled["mask"][:, 0].numpy()
            # Extra (n, 1, S, S) rows in [0, 1], e.g. APGA's probability map; other entries (cells) are not images.
            extra[method] = {
                k: v[:, 0].numpy()
                for k, v in sampled.items()
                if k != "mask" and v.dim() == 4 and v.shape[1] == 1 and v.shape[-2:] == x.shape[-2:]
            }
    if not rows:
        return None
    images = (x_u8.float() / 255).permute(0, 2, 3, 1).numpy()
    images = images[..., 0] if images.shape[-1] == 1 else images
    titles = [pool.classes[int(c)] for c in val.labels[index]]
    return plot_mask_gallery(images, rows, out / "masks.png", titles, extra={m: e for m, e in extra.items() if e})
