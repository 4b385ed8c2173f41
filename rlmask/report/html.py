"""``rlmask report``: one self-contained HTML page of run, compare and transfer folders.

Every figure is a PNG inside the page as a ``data:`` URI and the style sheet is inline, so the file
can be mailed, archived or opened offline and makes no network request at all.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import tempfile
from pathlib import Path

from rlmask import __version__
from rlmask.errors import UserError
from rlmask.evaluate.metrics import FINAL_METRICS, SUMMARY_METRICS
from rlmask.io import atomic_write_bytes, read_jsonl
from rlmask.report.figures import plot_confusion_matrix, plot_policy_panel, plot_run_curves

METRICS = SUMMARY_METRICS
LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "macro_precision": "macro precision",
    "macro_recall": "macro recall",
    "macro_f1": "macro F1",
    "auroc": "AUROC",
    "auroc_ovo": "AUROC OvO",
}
# Run options worth a row in the configuration table, in this order (the agent's resolved options follow).
RUN_KEYS = (
    "data",
    "model",
    "method",
    "init",
    "epochs",
    "image_size",
    "channels",
    "batch_size",
    "optimizer",
    "lr",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "seed",
    "train_per_class",
    "eval_per_class",
    "world_size",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
:root { --bg:#f3f5f9; --card:#fff; --ink:#1d2733; --muted:#66738a; --line:#e3e8ef; --accent:#3056d3;
        --head:#f7f9fc; --best:#dff5e6; --best-ink:#11643a; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header { background:linear-gradient(120deg,#1b2f73,#3056d3); color:#fff; padding:30px 48px 26px; }
header h1 { margin:0 0 6px; font-size:28px; font-weight:650; letter-spacing:-.01em; }
header .meta { margin:0; opacity:.85; font-size:14px; }
main { max-width:1180px; margin:0 auto; padding:24px 24px 48px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:22px 26px;
        margin:0 0 22px; box-shadow:0 1px 3px rgba(20,30,60,.06); }
h2 { margin:0 0 4px; font-size:21px; display:flex; align-items:center; gap:10px; }
h3 { margin:26px 0 10px; font-size:16px; color:#2b3a55; }
.path { color:var(--muted); font-size:13px; margin:0 0 8px; word-break:break-all; }
.badge { font-size:11px; text-transform:uppercase; letter-spacing:.06em; padding:3px 8px; border-radius:99px;
         color:#fff; font-weight:600; }
.badge.run { background:#0f8a6c; } .badge.compare { background:#3056d3; } .badge.transfer { background:#a0479a; }
nav ol { margin:6px 0 0; padding-left:22px; } nav li { margin:3px 0; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(340px,1fr)); gap:8px 28px; align-items:start; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:13.5px; margin:2px 0 6px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
thead th { background:var(--head); color:#3d4b63; font-weight:600; border-bottom:2px solid var(--line);
           white-space:nowrap; }
tbody tr:hover { background:#fafbfe; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.best { background:var(--best); color:var(--best-ink); font-weight:650; }
td.key { color:var(--muted); width:38%; }
table.kv { max-width:640px; }
.pm { color:var(--muted); font-size:12px; }
pre { background:#1f2633; color:#e6ebf3; padding:12px 14px; border-radius:8px; overflow-x:auto; font-size:12.5px;
      white-space:pre-wrap; overflow-wrap:anywhere; margin:0; }
figure { margin:14px 0 4px; text-align:center; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:8px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
.note { color:var(--muted); font-size:13.5px; }
.warn { color:#8a4b00; background:#fff4e0; border-left:3px solid #d98c00; padding:4px 8px; font-size:13.5px; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 28px; }
"""


def wall_time_line(result: dict) -> str:
    """comparison.md's and the report's line on time: the invocation's wall time and, per method, the training
    time summed over seeds, with its ratio to plain at equal compute (what the method costs)."""
    line = f"Wall time: {result['minutes']} min in this invocation (finished sub-runs are reused, not retrained)."
    train = result.get("train_minutes") or {}
    plain = train.get(f"plain ({result.get('equal_compute_epochs')} ep)")
    if train:
        cells = [
            f"{label} {minutes} min"
            + (f" ({minutes / plain:.2f}x plain)" if plain and not label.startswith("plain") else "")
            for label, minutes in train.items()
        ]
        line += " Training time summed over seeds (training epochs only): " + ", ".join(cells) + "."
    return line


def folder_kind(folder: Path) -> str:
    """``"compare"``, ``"transfer"`` or ``"run"`` by the files ``folder`` holds; UserError for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    if (folder / "comparison.json").is_file():
        return "compare"
    if (folder / "transfer.json").is_file():
        return "transfer"
    if (folder / "config.json").is_file() and (folder / "log.jsonl").is_file():
        return "run"
    raise UserError(f"{folder}: not an rlmask run, compare or transfer folder")


def build_report(dirs: list[Path], out: Path, title: str | None = None) -> Path:
    """Write one self-contained HTML page about the run, compare and transfer folders ``dirs`` to ``out``.

    Every folder gets a section with an anchor listed in the table of contents; figures are embedded
    PNGs, the CSS is inline and the page makes no external request. The file is written atomically.
    """
    if not dirs:
        raise UserError("report: give at least one run, compare or transfer folder")
    kinds = [folder_kind(Path(d)) for d in dirs]  # fail on a bad folder before any work
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give the HTML file to write")
    title = title or "rlmask report"
    render = {"run": _run_section, "compare": _compare_section, "transfer": _transfer_section}
    sections, toc = [], []
    with tempfile.TemporaryDirectory(prefix="rlmask-report-") as scratch:
        for i, (folder, kind) in enumerate(zip(map(Path, dirs), kinds), 1):
            anchor, name = f"s{i}-{kind}", str(folder).rstrip("/") or str(folder)
            body = render[kind](folder, Path(scratch) / str(i))
            toc.append(f'<li><a href="#{anchor}">{_e(name)}</a> <span class="pm">{kind}</span></li>')
            sections.append(
                f'<section class="card" id="{anchor}"><h2><span class="badge {kind}">{kind}</span>'
                f"{_e(name)}</h2>{body}</section>"
            )
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><p class="meta">generated {date} &middot; rlmask {__version__} &middot; '
        f"{len(sections)} folder(s)</p></header><main>"
        f'<nav class="card"><h2>Contents</h2><ol>{"".join(toc)}</ol></nav>{"".join(sections)}</main>'
        f"<footer>rlmask {__version__} &middot; self-contained report, no external resources</footer>"
        "</body></html>\n"
    )
    atomic_write_bytes(out, page.encode("utf-8"))
    out.chmod(0o644)  # a page to share: the atomic write's temporary file is private
    return out


# ---------------------------------------------------------------- small HTML pieces


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A table of pre-rendered cells; columns from ``numeric_from`` on are right-aligned numbers.
    A cell may be a ``(html, css_class)`` pair."""

    def cell(tag: str, j: int, value) -> str:
        text, extra = value if isinstance(value, tuple) else (value, "")
        classes = " ".join(c for c in ("num" if j >= numeric_from else "", extra) if c)
        attr = f' class="{classes}"' if classes else ""
        return f"<{tag}{attr}>{text}</{tag}>"

    thead = "".join(cell("th", j, _e(h)) for j, h in enumerate(head))
    tbody = "".join("<tr>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table></div>'


def _key_values(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f'<tr><td class="key">{_e(k)}</td><td>{_e(_plain(v))}</td></tr>' for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(_plain, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return "–" if value is None else str(value)


def _figure(png: bytes | None, caption: str) -> str:
    if not png or not png.startswith(PNG_SIGNATURE):
        return f'<p class="note">{_e(caption)}: no figure.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _png_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when it is missing (an unfinished run); UserError when unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _commands(folder: Path) -> str:
    path = folder / "command.txt"
    if not path.is_file():
        return ""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    label = "Command line" if len(lines) == 1 else "Command lines"
    return f"<h3>{label}</h3><pre>{_e(chr(10).join(lines))}</pre>" if lines else ""


# ---------------------------------------------------------------- run


def _run_section(folder: Path, scratch: Path) -> str:
    config = _read_json(folder / "config.json") or {}
    metrics = _read_json(folder / "metrics.json")
    records = read_jsonl(folder / "log.jsonl")
    pairs = [(k.replace("_", " "), config[k]) for k in RUN_KEYS if k in config and config[k] is not None]
    agent = config.get("agent_resolved") or {}
    agent_pairs = [(k.replace("_", " "), v) for k, v in agent.items() if k != "method" and not isinstance(v, dict)]
    summary = [
        config.get("method") or agent.get("method"),
        config.get("model"),
        _plain(config.get("data")),
        f"{config['epochs']} epoch(s)" if "epochs" in config else None,
        f"only {len(records)} logged" if len(records) < config.get("epochs", 0) else None,
    ]
    parts = [
        f"<p>{_e(' · '.join(str(x) for x in summary if x))}</p>"
        f'<div class="grid"><div><h3>Configuration</h3>{_key_values(pairs)}</div><div>'
    ]
    if metrics:
        # val, test, then the agent's final views (val_tta, test_tta for APGA) where present
        splits = [s for s in ("val", "test") if metrics.get(s)]
        splits += [s for s in metrics if s.startswith(("val_", "test_")) and isinstance(metrics[s], dict)]
        head = ["metric", *splits]
        rows = [[_e(LABELS[m]), *(_num(metrics[s].get(m)) for s in splits)] for m in FINAL_METRICS]
        best = metrics.get("best") or {}
        parts.append("<h3>Final metrics</h3>" + _table(head, rows))
        if best.get("epoch") is not None:
            parts.append(
                f'<p class="note">Best validation macro-F1 {_num(best.get("macro_f1"))} at epoch '
                f"{best['epoch'] + 1} (best.pt).</p>"
            )
    else:
        parts.append('<h3>Final metrics</h3><p class="note">No metrics.json yet: the run has not finished.</p>')
    if agent_pairs:
        parts.append(f"<h3>Masking agent ({_e(agent.get('method', '?'))})</h3>{_key_values(agent_pairs)}")
    parts.append("</div></div>" + _finetune_warning(folder, config, metrics) + _commands(folder))
    scratch.mkdir(parents=True, exist_ok=True)
    if records:
        png = plot_run_curves(records, scratch / "curves.png").read_bytes()
        parts.append("<h3>Training curves</h3>" + _figure(png, f"training curves over {len(records)} epoch(s)"))
        parts.append(_policy_section(folder, records, scratch))
    split = next((s for s in ("test", "val") if metrics and metrics.get(s)), None)
    if split and metrics[split].get("confusion_matrix"):
        result = metrics[split]
        classes = list(result.get("per_class") or map(str, range(len(result["confusion_matrix"]))))
        png = plot_confusion_matrix(result["confusion_matrix"], classes, scratch / "confusion.png").read_bytes()
        parts.append(
            f"<h3>Confusion matrix ({split} split)</h3>"
            + _figure(png, f"{split} split, {result.get('num_samples', '?')} images; rows: true class")
        )
    if split and metrics[split].get("per_class"):
        rows = [
            [_e(name), *(_num(c.get(k)) for k in ("precision", "recall", "f1", "auroc")), _num(c.get("support"))]
            for name, c in metrics[split]["per_class"].items()
        ]
        parts.append(
            f"<h3>Per class ({split} split)</h3>"
            + _table(["class", "precision", "recall", "F1", "AUROC", "support"], rows)
        )
    return "".join(parts)


def _finetune_warning(folder: Path, config: dict, metrics: dict | None) -> str:
    """A fine-tuning run that scores below the heated model it started from says so."""
    init = config.get("init")
    if not init or not metrics or config.get("method") not in (None, "plain", "finetune"):
        return ""
    init = Path(init)
    # As recorded (relative to where the run was started), else beside this run (compare's pretrain/finetune)
    candidates = [init.parent / "metrics.json", folder.parent / init.parent.name / "metrics.json"]
    heated = next((_read_json(p) for p in candidates if p.is_file()), None)
    split = next((s for s in ("test", "val") if metrics.get(s) and (heated or {}).get(s)), None)
    if split is None:
        return ""
    before, after = heated[split].get("macro_f1"), metrics[split].get("macro_f1")
    if before is None or after is None or after >= before:
        return ""
    return (
        f'<p class="warn">Fine-tuning lowered the score: {split} macro-F1 {_num(after)} after fine-tuning, '
        f"{_num(before)} for the heated model it started from ({_e(init.name)}).</p>"
    )


def _policy_section(folder: Path, records: list[dict], scratch: Path) -> str:
    """The masking policy's diagnostics (PGNM): the per-epoch panel and policy_summary.json."""
    png = plot_policy_panel(records, scratch / "policy.png")
    summary = _read_json(folder / "policy_summary.json") or {}
    if png is None and not summary:
        return ""
    parts = ["<h3>Policy</h3>"]
    if png is not None:
        parts.append(
            _figure(
                png.read_bytes(),
                "policy diagnostics per epoch: gradient norms, advantage, mask mean, drift from the initial Beta",
            )
        )
    if "val_moved_fraction" in summary:
        verdict = "barely moved" if summary.get("barely_moved") else "moved"
        parts.append(
            f'<p class="{"warn" if summary.get("barely_moved") else "note"}">Policy {verdict}: on the validation '
            f"split, {_num(summary['val_moved_fraction'])} of the cells' Beta means are more than 0.1 from the "
            f"untrained policy's (same bases; mean KL {_num(summary.get('val_kl_from_untrained'))}).</p>"
        )
    means, spreads = summary.get("val_mask_mean_per_class") or {}, summary.get("val_mask_std_per_class") or {}
    if means:
        rows = [[_e(c), _num(means[c]), _num(spreads.get(c))] for c in means]
        parts.append(_table(["class", "mean keep", "spread (std over images)"], rows))
    return "".join(parts)


# ---------------------------------------------------------------- compare


def _bounds(stat) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of a summary written as {mean, low, high} (compare) or {mean, ci: [low, high]} (transfer)."""
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return None, None, None
    low, high = stat.get("ci") or (stat.get("low"), stat.get("high"))
    if stat.get("n") == 1:  # one seed or repeat: no interval to show
        low = high = None
    return stat["mean"], low, high


def _stat_cell(stat) -> tuple[str, float | None]:
    """(html, mean) of a summary: mean ± half-width of its interval, [low, high] where clipping to the
    metric's range made it lopsided, the mean alone where there is no interval."""
    mean, low, high = _bounds(stat)
    if mean is None or low is None or high is None:
        return _num(mean), mean
    if abs((high - mean) - (mean - low)) > 5e-5:
        return f'{_num(mean)} <span class="pm">[{_num(low)}, {_num(high)}]</span>', mean
    return f'{_num(mean)} <span class="pm">± {_num(high - mean)}</span>', mean


def _summary_table(methods: dict, names: list[str], prefix: str = "") -> str:
    """Methods x metrics, mean ± half-width. No "best" highlight: which method is better is the paired
    comparison's verdict, not the largest mean."""
    rows = [[_e(m), *(_stat_cell(methods[m].get(prefix + k))[0] for k in METRICS)] for m in names]
    return _table(["method", *(LABELS[k] for k in METRICS)], rows)


def _paired_table(paired: dict) -> str:
    """method - plain per metric: difference [95% interval] and the verdict."""
    metrics = list(next(iter(paired.values())))
    rows = []
    for method, entry in paired.items():
        cells = []
        for k in metrics:
            stat = entry[k]
            interval = (
                f' <span class="pm">[{_num(stat["low"])}, {_num(stat["high"])}]</span>'
                if stat.get("low") is not None
                else ""
            )
            cells.append(f"{_num(stat.get('mean'))}{interval} {_e(stat.get('verdict', ''))}")
        rows.append([_e(method), *cells, _e(entry[metrics[0]].get("basis") or "none")])
    return _table(["method", *(f"Δ {LABELS.get(k, k)}" for k in metrics), "interval"], rows)


def _compare_section(folder: Path, scratch: Path) -> str:
    result = _read_json(folder / "comparison.json") or {}
    cfg, methods = result.get("config") or {}, result.get("methods") or {}
    equal = [m for m in methods if "reference view" not in m]
    short = [m for m in methods if "reference view" in m]
    heated = [m for m in equal if f"heated_{METRICS[0]}" in methods[m]]
    split = result.get("split", "test")
    parts = [
        f"<p>{_e(split.capitalize())} split; mean ± half-width of the 95% t-interval over "
        f"{_e(cfg.get('seeds', '?'))} seed(s) ([low, high] where clipped to [0, 1]; the mean alone with one seed). Data: {_e(_plain(cfg.get('data')))}; model: "
        f"{_e(cfg.get('model', '?'))}; methods: {_e(cfg.get('epochs', '?'))} pretraining + "
        f"{_e(cfg.get('finetune_epochs', '?'))} fine-tuning epochs; plain: "
        f"{_e(result.get('equal_compute_epochs', '?'))} epochs. {_e(wall_time_line(result)) if 'minutes' in result else ''}</p>"
    ]
    paired = result.get("paired") or {}
    if paired:  # the answer first: does each method beat plain training?
        parts.insert(
            0,
            "<h3>Method - plain (equal compute)</h3>"
            + _figure(
                _png_file(folder / "differences.png"),
                "difference to plain training, 95% interval and verdict: in-domain (paired by seed), then per unseen task and shot count (paired by seed and subset)",
            )
            + _paired_table(paired),
        )
    if equal:
        parts.append("<h3>Equal compute</h3>" + _summary_table(methods, equal))
    if short:
        others = [m for m in equal if not m.startswith("plain")]
        parts.append(
            "<h3>The reference's view (baseline trained for the pretraining epochs only)</h3>"
            + _summary_table(methods, short + others)
        )
    if heated:
        parts.append("<h3>Heated models before fine-tuning</h3>" + _summary_table(methods, heated, "heated_"))
    tta = [m for m in equal if f"heated_tta_{METRICS[0]}" in methods[m]]  # APGA's test-time augmentation
    if tta:
        parts.append(
            "<h3>Heated models with test-time augmentation (mean softmax of the clean and kept image)</h3>"
            + _summary_table(methods, tta, "heated_tta_")
        )
    parts.append(
        "<h3>Training curves</h3>"
        + _figure(_png_file(folder / "curves.png"), "validation macro-F1 and training loss, mean over seeds")
    )
    if (folder / "masks.png").is_file():
        parts.append(
            "<h3>Mask gallery</h3>"
            + _figure(_png_file(folder / "masks.png"), "validation images, the sampled masks and the masked images")
        )
    rows = [
        [_e(m), _num(r.get("seed")), *(_num(r.get(k)) for k in METRICS)]
        for m, summary in methods.items()
        for r in summary.get("per_seed", [])
    ]
    if rows:
        parts.append("<h3>Per seed</h3>" + _table(["method", "seed", *(LABELS[k] for k in METRICS)], rows))
    return "".join(parts) + _commands(folder)


# ---------------------------------------------------------------- transfer


def _shots_order(key: str) -> tuple[int, int]:
    return (1, 0) if not key.isdigit() else (0, int(key))


def _transfer_section(folder: Path, scratch: Path) -> str:
    result = _read_json(folder / "transfer.json") or {}
    cfg, results = result.get("config") or {}, result.get("results") or {}
    pairs = [
        (k.replace("_", " "), cfg[k]) for k in ("data", "mode", "epochs", "lr", "repeats", "shots", "seed") if k in cfg
    ]
    parts = [
        f"<p>{_e(str(result.get('split', 'test')).capitalize())} split; mean [95% t-interval] over repeats; "
        "the training subsets are identical for every checkpoint.</p>"
    ]
    if pairs:
        parts.append(_key_values(pairs))
    for label in result.get("checkpoints") or list(results):
        by_shots = results.get(label) or {}
        rows = []
        for shots in sorted(by_shots, key=_shots_order):
            entry = by_shots[shots]
            counts = sorted({r.get("n_train") for r in entry.get("repeats", []) if r.get("n_train") is not None})
            cells = []
            for mean, low, high in (_bounds(entry.get(k)) for k in METRICS):
                interval = f' <span class="pm">[{_num(low)}, {_num(high)}]</span>' if high is not None else ""
                cells.append(_num(mean) + interval)
            repeats = len(entry.get("repeats", []))
            rows.append([_e(shots), _e("/".join(map(str, counts)) or "–"), _num(repeats), *cells])
        info = (result.get("checkpoint_info") or {}).get(label) or {}
        path = f' <span class="pm">{_e(info["path"])}</span>' if info.get("path") else ""
        parts.append(
            f"<h3>{_e(label)}{path}</h3>" + _table(["shots", "images", "repeats", *(LABELS[k] for k in METRICS)], rows)
        )
    if (folder / "transfer.png").is_file():
        parts.append(
            "<h3>Transfer curve</h3>"
            + _figure(_png_file(folder / "transfer.png"), "macro-F1 against training images per class")
        )
    return "".join(parts) + _commands(folder)
