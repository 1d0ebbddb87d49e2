"""The table of figures: one row per figure, one column per server, the ratio ours/ref-file."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams_server.bench.workloads.base import Metric, Target

OURS, REFERENCE = "ours", "ref-file"


@dataclass(frozen=True)
class Row:
    """One figure across servers."""

    key: str
    label: str
    unit: str
    values: dict[str, float]
    target: Target | None
    notes: str

    @property
    def ratio(self) -> float | None:
        ours, ref = self.values.get(OURS), self.values.get(REFERENCE)
        if self.unit == "x":  # already a ratio (to the same server's baseline)
            return None
        if ours is None or ref is None or not ref or math.isnan(ours) or math.isnan(ref):
            return None
        return ours / ref

    @property
    def met(self) -> bool | None:
        ours = self.values.get(OURS)
        if self.target is None or ours is None:
            return None
        return self.target.met(ours, self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "unit": self.unit,
                "values": {k: _json_number(v) for k, v in self.values.items()},
                "ratio_ours_ref_file": _json_number(self.ratio),
                "target": self.target.describe(self.unit) if self.target else None,
                "met": self.met, "notes": self.notes or None}


def build_rows(results: Mapping[str, Sequence[Metric]]) -> list[Row]:
    """Rows in the order figures first appear (workload order), merged across servers."""
    order: list[str] = []
    by_key: dict[str, dict[str, Metric]] = {}
    for server, metrics in results.items():
        for metric in metrics:
            if metric.key not in by_key:
                order.append(metric.key)
                by_key[metric.key] = {}
            by_key[metric.key][server] = metric
    order.sort(key=lambda k: int(k.split(".", 1)[0]))  # stable: keeps order inside a workload
    rows = []
    for key in order:
        per_server = by_key[key]
        first = next(iter(per_server.values()))
        notes = _merge_notes({s: m.note for s, m in per_server.items() if m.note})
        rows.append(Row(key, first.label, first.unit,
                        {s: m.value for s, m in per_server.items()}, first.target, notes))
    return rows


def render(rows: Sequence[Row], servers: Sequence[str], errors: Mapping[str, str]) -> str:
    """The table as aligned text, then the notes and errors under it."""
    header = ["figure", "unit", *servers, "ours/ref-file", "target", "met"]
    lines = [header]
    for row in rows:
        cells = [row.label, row.unit]
        cells += [_fmt(row.values.get(s)) for s in servers]
        cells += [_fmt(row.ratio, ratio=True) if row.ratio is not None else "-",
                  row.target.describe(row.unit) if row.target else "",
                  {True: "yes", False: "NO", None: ""}[row.met]]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for n, cells in enumerate(lines):
        text.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    notes = [f"  {row.label}: {row.notes}" for row in rows if row.notes]
    if notes:
        text += ["", "notes:", *notes]
    if errors:
        text += ["", "errors (these figures are missing):",
                 *(f"  {where}: {message}" for where, message in errors.items())]
    return "\n".join(text)


def _merge_notes(notes: dict[str, str]) -> str:
    """``ours: x; ref-file: y``, or just ``x`` when every server has the same note."""
    by_text: dict[str, list[str]] = {}
    for server, text in notes.items():
        by_text.setdefault(text, []).append(server)
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{', '.join(servers)}: {text}" for text, servers in by_text.items())


def _fmt(value: float | None, *, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "n/a"
    if ratio:
        return f"{value:.2f}x"
    magnitude = abs(value)
    if magnitude >= 1000 or value.is_integer():
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _json_number(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 4)
