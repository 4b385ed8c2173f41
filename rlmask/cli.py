"""The ``rlmask`` command line. Each command only wires pieces of the package together."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from rlmask import __version__
from rlmask.config import add_dataclass_arguments, cli_names, resolve, split_known
from rlmask.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with rlmask's error convention: one ``error: ...`` line and exit status 2, no usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --epoch must not silently mean --epochs
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of options (flags override it)")


_ARGV: list[str] = []  # the arguments of this invocation, recorded in output folders


def _record_command(out: str | Path, cfg=None):
    """Check the output folder before any work (a run's: refuse a finished one unless --overwrite, --resume or
    --versioned) and keep the exact command line that wrote to it inside it (first process only).

    Returns ``cfg`` with ``out`` set to the folder the run writes (``--versioned``: ``--out/version_N``)."""
    if cfg is not None and hasattr(cfg, "validate"):
        cfg.validate()  # a bad option is reported before anything is written
    from rlmask.io import next_version, prepare_run_folder

    versioned = bool(getattr(cfg, "versioned", False))
    if versioned and not getattr(cfg, "resume", None) and (Path(out) / "metrics.json").is_file():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the processes could not agree on N before they start
            raise UserError(f"--versioned: not under torchrun; --out {out} holds a finished run, give a new --out")
        out = next_version(Path(out))
        cfg = dataclasses.replace(cfg, out=str(out))
        print(f"--out holds a finished run: this run writes {out}", file=sys.stderr)
    if int(os.environ.get("RANK", "0")) != 0:
        return cfg
    out = prepare_run_folder(out, overwrite=getattr(cfg, "overwrite", True), resume=bool(getattr(cfg, "resume", None)))
    line = shlex.join(["rlmask", *_ARGV]).encode("utf-8", "surrogateescape") + b"\n"  # any bytes in paths
    try:
        with open(out / "command.txt", "ab") as fh:
            fh.write(line)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from rlmask.train.loop import TrainConfig, fit

    cfg = resolve(TrainConfig, args, args.config)
    cfg = _record_command(cfg.out, cfg)
    metrics = fit(cfg)
    _print_final(metrics, cfg.out)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rlmask.agents import get_agent
    from rlmask.train.methods import PretrainConfig, pretrain

    cfg = _resolve_with_agent(PretrainConfig, args)
    get_agent(cfg.method).make_options(cfg.agent)  # a bad agent option is reported before --out is touched
    cfg = _record_command(cfg.out, cfg)
    _print_final(pretrain(cfg), cfg.out, get_agent(cfg.method).task)
    return 0


def _resolve_with_agent(cls: type, args: argparse.Namespace):
    """``cls`` (with ``method`` and ``agent`` fields) from the config file and flags: the file's keys that are
    options of the method's agent, and the agent's flags, go to ``agent``; a key of another agent is an error."""
    from rlmask.agents import get_agent
    from rlmask.config import coerce_all, load_config_file

    file_values = load_config_file(args.config) if args.config else {}
    spec = get_agent(args.method or file_values.get("method") or cls.method)
    agent_file, rest = split_known(file_values, spec.options)
    _, unknown = split_known(rest, cls)
    _reject_foreign_options(unknown, spec.name, f"--config {args.config}")
    agent_values = coerce_all(spec.options, agent_file, f"--config {args.config}") if agent_file else {}
    if spec.options is not None:
        agent_values |= {k: v for k, v in vars(args).items() if k in cli_names(spec.options) and v is not None}
    return resolve(cls, args, args.config, file_values=rest, agent=agent_values)


def _reject_foreign_options(names, method: str, where: str) -> None:
    """A one-line error for option names that belong to another agent than ``method`` (or to none)."""
    from rlmask.agents.registry import owner_of

    for name in sorted(names):
        owners = owner_of(name)
        if owners:
            raise UserError(
                f"{where}: {name.replace('_', '-')} is an option of method {', '.join(owners)}, not of {method}"
            )
    if names:
        raise UserError(f"{where}: unknown option(s) {', '.join(sorted(names))}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from rlmask.train.methods import FinetuneConfig, finetune

    cfg = resolve(FinetuneConfig, args, args.config)
    cfg = _record_command(cfg.out, cfg)
    _print_final(finetune(cfg), cfg.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rlmask.agents import AGENTS, get_agent
    from rlmask.config import coerce_all, load_config_file
    from rlmask.experiments.compare import (
        DEFAULT_METHODS,
        FINETUNE_PER_METHOD,
        PRETRAIN_OWN,
        CompareConfig,
        parse_methods,
        run_comparison,
    )

    file_values = load_config_file(args.config) if args.config else {}
    methods = getattr(args, "methods", None) or file_values.get("methods") or DEFAULT_METHODS
    variants = parse_methods([methods] if isinstance(methods, str) else [str(m) for m in methods])
    sections = {}  # a config file's section per method: {method: {option: value}}
    for key in [k for k, v in file_values.items() if isinstance(v, dict)]:
        method = key.replace("_", "-") if key.replace("_", "-") in {*AGENTS, *variants} else key
        spec = get_agent(variants.get(method, method), f"--config {args.config}: section")
        values = {str(k).replace("-", "_"): v for k, v in file_values.pop(key).items()}
        agent_fields = {f.name for f in dataclasses.fields(spec.options)} if spec.options else set()
        own = (*PRETRAIN_OWN, *FINETUNE_PER_METHOD)
        training = {k: values.pop(k) for k in list(values) if k in own and k not in agent_fields}
        if spec.options is None and values:
            raise UserError(f"--config {args.config}: section {method}: method {method} takes no options")
        if spec.options is not None:
            _, unknown = split_known(values, spec.options)
            _reject_foreign_options(unknown, method, f"--config {args.config}: section {method}")
            values = coerce_all(spec.options, values, f"--config {args.config}: section {method}")
        sections[method] = values | training  # the training options are coerced by CompareConfig.validate
    cfg = resolve(CompareConfig, args, args.config, file_values=file_values, method_options=sections)
    cfg.validate()  # every option checked before --out is made
    _record_command(cfg.out)
    result = run_comparison(cfg)
    print((Path(cfg.out) / "comparison.md").read_text())
    print(f"comparison ({result['minutes']} min in this invocation) -> {cfg.out}")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from rlmask.experiments.transfer import TransferConfig, run_transfer

    cfg = resolve(TransferConfig, args, args.config)
    _record_command(cfg.out)
    run_transfer(cfg)
    print((Path(cfg.out) / "transfer.md").read_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rlmask.report.html import build_report

    out = build_report([Path(d) for d in args.dirs], Path(args.out), args.title)
    print(f"report -> {out}")
    return 0


def _print_final(metrics: dict, out: str, task: str = "classify") -> None:
    """One line: the task's summary metrics of the test split (val without one)."""
    from rlmask.train.tasks import TASKS

    test = metrics.get("test") or metrics["val"]
    split = "test" if metrics.get("test") else "val"
    scores = "  ".join(
        f"{k} {'n/a' if test[k] is None else f'{test[k]:.4f}'}" for k in TASKS[task].summary_metrics if k in test
    )
    print(f"{split}: {scores}  -> {out}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rlmask.evaluate.inference import evaluate_checkpoint
    from rlmask.evaluate.metrics import FINAL_METRICS

    metrics = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        split=args.split,
        model_name=args.model,
        small_stem=args.small_stem,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        cache_dir=args.cache_dir,
        trust=args.trust_checkpoint,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for key in FINAL_METRICS:
            value = metrics[key]
            print(f"{key:>18}  {'n/a' if value is None else f'{value:.4f}'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from rlmask.evaluate.inference import predict_files

    rows = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        model_name=args.model,
        small_stem=args.small_stem,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        trust=args.trust_checkpoint,
        overwrite=args.overwrite,
    )
    print(f"{rows} predictions -> {args.out}")
    return 0


def _data_options(args: argparse.Namespace):
    from rlmask.data.options import DataOptions

    return resolve(DataOptions, args)


def cmd_data_info(args: argparse.Namespace) -> int:
    from rlmask.data import build_pool

    pool = build_pool(
        args.specs,
        args.image_size,
        args.channels,
        cache_dir=args.cache_dir,
        progress=args.progress,
        options=_data_options(args),
        seed=args.seed,
        warn=False,
    )
    info = pool.info(colours=True, progress=args.progress)
    # stdout holds the summary only (with --json: one strict JSON document); progress and warnings go to stderr
    warnings = [f"--data {s['spec']}: {w}" for s in info["sources"] for w in s.get("warnings", [])]
    if args.json:
        print(json.dumps(info, indent=2, allow_nan=False))
        _warn_lines(warnings)
        return 0
    print(f"{info['num_classes']} classes, {info['channels']} channel(s), {info['image_size']} px")
    for source in info["sources"]:
        print(
            f"  source {source['name']}: {source['num_classes']} classes, native {source['native_shape']} "
            f"({source['spec']})"
        )
        for line in _source_lines(source):
            print(f"    {line}")
    splits = info["splits"]
    print(f"{'class':<40}" + "".join(f"{s:>8}" for s in splits))
    for name in info["classes"]:
        print(f"{name:<40}" + "".join(f"{splits[s]['per_class'].get(name, 0):>8}" for s in splits))
    print(f"{'total':<40}" + "".join(f"{splits[s]['count']:>8}" for s in splits))
    _warn_lines(warnings)
    return 0


def _warn_lines(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _source_lines(source: dict) -> list[str]:
    """How one source was read, as lines for ``data info``: layout, split, exclusions, colours, pack sizes."""
    lines = []
    if source.get("layout") == "pack":
        h, w, c = source["packed_from_native_shape"]
        s = source["packed_shape"]
        lines.append(
            f"pack: stored {s[0]}x{s[1]} px, {s[2]} channel(s); packed from native {h}x{w} px, "
            f"{c} channel(s) ({source.get('packed_from') or 'unknown source'})"
        )
    elif source.get("layout"):
        lines.append(f"layout: {source['layout']}")
    split = source.get("split")
    if split:
        fractions = ", ".join(
            f"{k.removesuffix('_fraction')} {v:g}" for k, v in split.items() if k.endswith("_fraction")
        )
        counts = ", ".join(f"{k} {v}" for k, v in split["counts"].items())
        lines.append(f"split: seeded (seed {split['seed']}) from {split['from']}: {fractions} -> {counts}")
    for pattern, n in source.get("exclude", {}).items():
        lines.append(f"--exclude {pattern!r}: removed {n} file(s)")
    if source.get("masks"):
        lines.append(f"mask-like files: {source['masks']} ({'used' if source.get('masks_kept') else 'left out'})")
    if source.get("dropped_classes"):
        lines.append(f"classes with every file left out: {', '.join(source['dropped_classes'])}")
    if "rows" in source:
        lines.append(f"manifest rows: {source['rows']}, bad rows skipped: {source.get('skipped_rows', 0)}")
    if "colours" in source:
        lines.append(f"files: {source['colours']['grey']} grey, {source['colours']['rgb']} RGB")
    return lines


def cmd_data_pack(args: argparse.Namespace) -> int:
    from rlmask.data.packed import pack_folder

    meta = pack_folder(
        args.src,
        Path(args.out),
        args.image_size,
        args.channels,
        args.shard_size,
        num_workers=args.num_workers,
        progress=args.progress,
        options=_data_options(args),
        seed=args.seed,
    )
    for line in meta["read"].get("warnings", []):
        print(f"warning: --data {args.src}: {line}", file=sys.stderr)
    counts = ", ".join(f"{split} {v['count']}" for split, v in meta["splits"].items())
    print(
        f"{len(meta['classes'])} classes, {meta['channels']} channel(s), {meta['image_size']} px "
        f"({counts}) -> {args.out}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rlmask.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rlmask.bench import BenchConfig, run_bench

    cfg = _resolve_with_agent(BenchConfig, args)
    result = run_bench(cfg)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>22}  {value}")
    return 0


def _checkpoint_reader(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="rlmask checkpoint, heated.pt or timm state dict")
    parser.add_argument("--model", help="architecture of a plain state dict (default: from config.json beside it)")
    parser.add_argument(
        "--small-stem",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a plain state dict's stem: stride-1 without max-pool (default: from config.json beside it, else "
        "guessed from the first convolution; a deep-stem model such as resnet10t is taken as standard)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (default: 256)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: where the device computes bf16 natively, as in training; "
        "--no-amp reproduces figures of float32 runs)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint that holds Python objects beyond tensors and plain data: this RUNS "
        "CODE from the file (only for files you trust)",
    )


def _data_read_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of ``data info`` / ``data pack`` that read data as ``rlmask train`` does (split seed, DataOptions)."""
    from rlmask.data.options import DataOptions

    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split of data without val/test splits, as `rlmask train --seed` (default: 0)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress bars (default: on; --no-progress hides them)",
    )
    add_dataclass_arguments(parser, DataOptions)


AGENT_COMMANDS = ("pretrain", "bench")  # commands whose flags include those of the --method's agent


def _method_in(argv: list[str]) -> str | None:
    """The ``--method`` of an agent command line (from the flag, else its ``--config`` file), or None."""
    from rlmask.config import load_config_file

    pre = Parser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.method:
        return known.method
    return load_config_file(known.config).get("method") if known.config else None


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; ``method``: the agent whose options ``pretrain`` and ``bench`` take."""
    from rlmask.agents import get_agent
    from rlmask.bench import BenchConfig
    from rlmask.experiments.compare import CompareConfig
    from rlmask.experiments.transfer import TransferConfig
    from rlmask.train.loop import TrainConfig
    from rlmask.train.methods import FinetuneConfig, PretrainConfig

    parser = Parser(prog="rlmask", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"rlmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def options_command(name: str, help: str, options: type, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _add_config_flag(p)
        if options is TransferConfig:  # checkpoints are positional
            p.add_argument(
                "checkpoints",
                nargs="*",
                default=argparse.SUPPRESS,
                metavar="CKPT",
                help="rlmask checkpoints, heated.pt or timm state dicts (several: identical subsets, one plot)",
            )
        add_dataclass_arguments(p, options, skip=("checkpoints",))
        if name in AGENT_COMMANDS:  # the options of the agent named by --method (parsed first)
            spec = get_agent(method or options.method)
            if spec.options is not None:
                group = p.add_argument_group(f"options of method {spec.name} (other methods: --method NAME --help)")
                add_dataclass_arguments(group, spec.options)
        p.set_defaults(func=func)
        return p

    options_command("train", "train a classifier plainly (no mask)", TrainConfig, cmd_train)
    options_command(
        "pretrain", "pretrain with a masking agent (PGNM by default); writes heated.pt", PretrainConfig, cmd_pretrain
    )
    options_command(
        "finetune", "fine-tune a heated model on clean images (reference schedule)", FinetuneConfig, cmd_finetune
    )
    options_command(
        "compare", "every method pretrained + fine-tuned vs plain training, several seeds", CompareConfig, cmd_compare
    )
    options_command(
        "transfer",
        "few-shot transfer of checkpoints to an unseen task, with 95%% intervals",
        TransferConfig,
        cmd_transfer,
    )

    p = sub.add_parser("report", help="one self-contained HTML page of run, compare and transfer folders")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, compare or transfer folders")
    p.add_argument("--out", default="report.html", metavar="FILE", help="HTML file to write (default: report.html)")
    p.add_argument("--title", help='page title (default: "rlmask report")')
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    _checkpoint_reader(p)
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="SPEC")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--cache-dir")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities of image files")
    _checkpoint_reader(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER")
    p.add_argument("--out", default="preds.csv", help="CSV file to write (default: preds.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="inspect and pack data sources")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = data_sub.add_parser("info", help="classes, counts per split, layout, exclusions and image shapes of a pool")
    q.add_argument(
        "specs",
        nargs="+",
        metavar="SPEC",
        help="--data specs as for train: file.npz, image folder, labels.csv / csv:FILE?path=COL&label=COL, "
        "pack folder, medmnist:NAME, synthetic",
    )
    _data_read_flags(q)
    q.add_argument(
        "--image-size", type=int, metavar="PX", help="image side of the pool (default: the largest native side)"
    )
    q.add_argument("--channels", type=int, choices=[1, 3], help="1 or 3 (default: 3 if any source is RGB, else 1)")
    q.add_argument(
        "--cache-dir", metavar="DIR", help="download/index cache (default: $RLMASK_CACHE or ~/.cache/rlmask)"
    )
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=cmd_data_info)
    q = data_sub.add_parser("pack", help="decode and resize an image folder or manifest once into memory-mapped shards")
    q.add_argument(
        "src",
        metavar="SRC",
        help="image folder (class folders, optionally inside train/ val/ test/) or "
        "labels.csv / csv:FILE?path=COL&label=COL&split=COL",
    )
    q.add_argument("--out", required=True, metavar="DIR", help="pack folder to create (must not exist)")
    q.add_argument("--image-size", type=int, required=True, metavar="PX", help="side of the stored square images")
    q.add_argument("--channels", type=int, choices=[1, 3], help="1 or 3 (default: those of the first training image)")
    q.add_argument("--shard-size", type=int, default=50_000, metavar="N", help="images per shard file (default: 50000)")
    q.add_argument("--num-workers", type=int, default=0, metavar="W", help="decoding processes (default: 0)")
    _data_read_flags(q)
    q.set_defaults(func=cmd_data_pack)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = options_command("bench", "training and data-pipeline throughput", BenchConfig, cmd_bench)
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = argv
    try:
        method = _method_in(argv[1:]) if argv and argv[0] in AGENT_COMMANDS else None
        parser = build_parser(method)
        args, extras = parser.parse_known_args(argv)
        if extras:
            flags = {e.split("=", 1)[0][2:].replace("-", "_") for e in extras if e.startswith("--")}
            if not flags or len(flags) < len([e for e in extras if not e.startswith("--")]):
                parser.parse_args(argv)  # argparse's own message for stray arguments
            _reject_foreign_options(flags, method or getattr(args, "method", "") or "", argv[0])
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
