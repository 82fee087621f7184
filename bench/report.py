"""The one table the benchmark prints, and the small statistics behind it."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

COLUMNS = ("figure", "mailfast", "Postfix", "ratio", "target", "")


@dataclass(slots=True)
class Row:
    section: str
    figure: str
    mailfast: str = ""
    postfix: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "pass", "MISS", or "" where there is no target
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def median_range(values: list[float], digits: int = 0) -> str:
    """``1234 (1200-1260)``: the median and the extremes of a few runs."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    low, high = min(values), max(values)
    middle = statistics.median(values)
    return f"{middle:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation across a gap in few samples)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return ""
    return f"{ours / theirs:.2f}x"


def verdict(met: bool | None) -> str:
    if met is None:
        return "n/a"
    return "pass" if met else "MISS"


def render(rows: list[Row]) -> str:
    """Rows grouped by section, as fixed-width text."""
    cells = [COLUMNS]
    sections: list[int] = []  # indices of section header lines
    current = None
    for row in rows:
        if row.section != current:
            current = row.section
            sections.append(len(cells))
            cells.append((row.section,))
        cells.append(
            (row.figure, row.mailfast, row.postfix, row.ratio, row.target, row.verdict)
        )
    widths = [
        max(len(line[i]) for line in cells if len(line) > 1 and i < len(line))
        for i in range(len(COLUMNS))
    ]
    total = sum(widths) + 2 * (len(widths) - 1)
    out = []
    for index, line in enumerate(cells):
        if index in sections:
            out.append(f"-- {line[0]} ".ljust(total, "-"))
            continue
        padded = [
            line[i].ljust(widths[i]) if i == 0 else line[i].rjust(widths[i])
            for i in range(len(COLUMNS))
        ]
        out.append("  ".join(padded).rstrip())
        if index == 0:
            out.append("=" * total)
    return "\n".join(out)
