"""`migrator report`: one self-contained HTML page from a staging store's manifests and its last
verification — what a platform team attaches to the change ticket.

Counts per kind of object and state, the failures with their errors, the verify outcome per
kind, the bytes moved, runs per experiment, and throughput over time (runs finished per minute,
from the manifests' `updated_at`). Charts are inline SVG: the file needs nothing else, no
script and no network, to be read anywhere.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

from migrator.ledger import Ledger
from migrator.manifest import (
    FAILED,
    ManifestTable,
    evaluation_datasets_table,
    experiments_table,
    logged_models_table,
    model_versions_table,
    models_table,
    runs_table,
    scorers_table,
    traces_table,
    verify_counts,
)
from migrator.progress import human_size
from migrator.registry import PROMPTS
from migrator.registry_driver import registry_tables
from migrator.staging import Staging, open_staging

#: Failures listed on the page at most (the manifest has them all).
MAX_FAILURES = 200
#: Experiments in the chart of runs per experiment at most (the largest).
_TOP_EXPERIMENTS = 40


def _kinds(staging: Staging) -> list[tuple[str, ManifestTable, str]]:
    """(label, table, the column naming an object) of every manifest."""
    prompts, prompt_versions = registry_tables(staging, PROMPTS)
    return [
        ("experiments", experiments_table(staging), "name"),
        ("runs", runs_table(staging), "source_run_id"),
        ("logged models", logged_models_table(staging), "source_model_id"),
        ("registered models", models_table(staging), "name"),
        ("model versions", model_versions_table(staging), "name"),
        ("prompts", prompts, "name"),
        ("prompt versions", prompt_versions, "name"),
        ("traces", traces_table(staging), "source_trace_id"),
        ("evaluation datasets", evaluation_datasets_table(staging), "source_dataset_id"),
        ("scorers", scorers_table(staging), "source_scorer_key"),
    ]


def build(staging_uri: str) -> str:
    """The report page of a staging store, as HTML text.

    Each manifest is read into the on-disk ledger the driver uses (`ManifestTable.open`, a row
    group at a time, nothing written) and summed from there: counts by SQL, the rest in one
    pass over the rows. The page of ten million runs needs no more memory than that of ten."""
    staging = open_staging(staging_uri)
    counts: dict[str, Counter[str]] = {}
    failures: list[tuple[str, str, str, str]] = []
    bytes_moved = 0
    per_exp: Counter[str] = Counter()
    seconds: Counter[int] = Counter()  # runs by the second their row last changed
    names: dict[str, str] = {}
    with ExitStack() as opened:
        ledgers: dict[str, Ledger] = {}
        for label, table, name_col in _kinds(staging):
            opened.callback(table.close)
            led = ledgers[label] = table.open(fold=False)
            found = led.counts()
            if not found:
                continue
            counts[label] = found
            for r in islice(led.rows(states=[FAILED]), MAX_FAILURES):
                obj = str(r.get(name_col) or "")
                if label.endswith("versions"):
                    obj = f"{obj} {r.get('version')}"
                failures.append((label, obj, r.get("failed_stage") or "", r.get("error") or ""))
            if "artifact_bytes" in table.schema.names:
                for r in led.rows():
                    bytes_moved += int(r.get("artifact_bytes") or 0)
                    if label == "runs" and r.get("updated_at") is not None:
                        seconds[int(r["updated_at"]) // 1000] += 1
            if label == "runs":
                per_exp = led.group_counts()
        for e, _ in per_exp.most_common(_TOP_EXPERIMENTS):
            row = ledgers["experiments"].get(e) or {}
            names[e] = row.get("name") or e
    verify = verify_counts(staging)
    return _page(staging.uri, counts, failures, bytes_moved, per_exp, seconds, names, verify)


def write(staging_uri: str, out: str) -> Path:
    path = Path(out)
    path.write_text(build(staging_uri), encoding="utf-8")
    return path


# ---- the page --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .7rem;text-align:left}
th{background:#f2f4f8} tr:nth-child(even) td{background:#fafbfc}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17803d} .bad{color:#b42318;font-weight:600} .err{font-family:monospace;font-size:12px}
.cards{display:flex;gap:1rem;flex-wrap:wrap} .card{border:1px solid #dde;border-radius:8px;
padding:.6rem 1rem} .card b{display:block;font-size:1.4rem}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _table(head: Iterable[str], rows: Iterable[Iterable[object]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{_e(v)}</td>" for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><tr>{th}</tr>{body}</table>'


def _bars(title: str, items: list[tuple[str, int]], width: int = 900) -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return f"<p>{_e(title)}: nothing yet</p>"
    top = max(n for _, n in items) or 1
    row_h, label_w = 22, 260
    height = row_h * len(items) + 10
    bars = []
    for i, (label, n) in enumerate(items):
        y = 5 + i * row_h
        w = (width - label_w - 80) * n / top
        bars.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(label[:40])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="#3b6fd8"><title>{_e(label)}: {n}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{n:,}</text>'
        )
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{height}" font-size="12">{"".join(bars)}</svg></figure>'
    )


def _columns(title: str, items: list[tuple[str, int]], width: int = 900) -> str:
    """A column chart (time on the x axis) as inline SVG."""
    if not items:
        return f"<p>{_e(title)}: nothing yet</p>"
    top = max(n for _, n in items) or 1
    height, pad = 180, 30
    step = (width - 2 * pad) / len(items)
    cols = []
    for i, (label, n) in enumerate(items):
        h = (height - 2 * pad) * n / top
        x = pad + i * step
        cols.append(
            f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#17803d"><title>{_e(label)}: {n}</title></rect>'
        )
    first, last = items[0][0], items[-1][0]
    cols.append(f'<text x="{pad}" y="{height - 8}">{_e(first)}</text>')
    cols.append(f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">{_e(last)}</text>')
    cols.append(f'<text x="{pad}" y="{pad - 10}">peak {top:,}</text>')
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{height}" font-size="12">{"".join(cols)}</svg></figure>'
    )


#: Bucket widths of the throughput chart, seconds: the smallest that gives at most 60 columns.
_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


def _throughput(seconds: Counter[int]) -> tuple[str, list[tuple[str, int]]]:
    """Runs by the time their row last changed (the last stage that moved them), in buckets
    wide enough for at most 60 columns; and the bucket's width in words."""
    if not seconds:
        return "", []
    lo, hi = min(seconds), max(seconds)
    width = next((b for b in _BUCKETS_S if (hi - lo) / b < 60), _BUCKETS_S[-1])
    buckets: Counter[int] = Counter()
    for second, n in seconds.items():
        buckets[(second - lo) // width] += n
    fmt = "%H:%M:%S" if width < 60 else "%m-%d %H:%M"
    items = [
        (time.strftime(fmt, time.gmtime(lo + b * width)), buckets.get(b, 0))
        for b in range(max(buckets) + 1)
    ]
    unit = f"{width} s" if width < 60 else f"{width // 60} min"
    return unit, items


def _throughput_title(seconds: Counter[int]) -> tuple[str, list[tuple[str, int]]]:
    unit, items = _throughput(seconds)
    return f"runs by their last state change, per {unit} (UTC)", items


def _page(
    uri: str,
    counts: dict[str, Counter[str]],
    failures: list[tuple[str, str, str, str]],
    bytes_moved: int,
    per_exp: Counter[str],
    seconds: Counter[int],
    names: dict[str, str],
    verify: Counter[tuple[str, str]],
) -> str:
    n_failed = sum(c.get(FAILED, 0) for c in counts.values())
    states = sorted({s for c in counts.values() for s in c})
    verified = sum(verify.values())
    differ = sum(n for (_, outcome), n in verify.items() if outcome != "match")
    cards = [
        ("objects", sum(sum(c.values()) for c in counts.values())),
        ("failed", n_failed),
        ("bytes moved", human_size(bytes_moved)),
        ("verified", f"{verified - differ:,} / {verified:,} match" if verified else "not yet"),
    ]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Migration report: {_e(uri)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Migration report</h1><p>Staging store <code>{_e(uri)}</code>, written "
        f"{_e(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}.</p>",
        '<div class="cards">'
        + "".join(
            f'<div class="card" id="card-{_e(k.replace(" ", "-"))}">{_e(k)}<b>'
            f"{v if isinstance(v, str) else f'{v:,}'}</b></div>"
            for k, v in cards
        )
        + "</div>",
        "<h2>Objects by state</h2>",
        _table(
            ["kind", *states, "total"],
            (
                [label, *(c.get(s, 0) for s in states), sum(c.values())]
                for label, c in counts.items()
            ),
            "states",
        ),
        "<h2>Verification</h2>",
        _table(
            ["kind", "outcome", "objects"],
            ([k, o, n] for (k, o), n in sorted(verify.items())),
            "verify",
        )
        if verify
        else "<p>No verification yet: run <code>migrator verify</code>.</p>",
        f"<h2>Failures ({n_failed:,})</h2>",
        _table(
            ["kind", "object", "stage", "error"],
            ([k, o, s, e] for k, o, s, e in failures),
            "failures",
        )
        if failures
        else '<p class="ok">None.</p>',
        "<h2>Runs per experiment</h2>",
        _bars(
            "runs per experiment",
            [(names.get(e, e), n) for e, n in per_exp.most_common(_TOP_EXPERIMENTS)],
        ),
        "<h2>Throughput</h2>",
        _columns(*_throughput_title(seconds)),
        "</body></html>",
    ]
    return "\n".join(parts)
