"""Go's legacy text profile layout (``?debug=1``), byte for byte where it can be.

Go writes these through ``text/tabwriter`` (minwidth 1, tabwidth 8, padding 1, tab
padding), so ``tabwrite`` reproduces that alignment: a column's width is fixed per block
of consecutive lines that have a cell in that column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from labotel.profile.pprof import LocationInfo

_TAB_WIDTH = 8
_PADDING = 1


def tabwrite(lines: Sequence[str]) -> str:
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[0] * (len(row) - 1) for row in rows]
    _layout(rows, widths, 0, 0, len(rows))
    out = []
    for row, row_widths in zip(rows, widths, strict=True):
        parts = []
        for cell, width in zip(row[:-1], row_widths, strict=True):
            parts.append(cell + "\t" * ((width - len(cell) + _TAB_WIDTH - 1) // _TAB_WIDTH))
        parts.append(row[-1])
        out.append("".join(parts))
    return "\n".join(out)


def _layout(rows: list[list[str]], widths: list[list[int]], column: int, start: int,
            end: int) -> None:
    line = start
    while line < end:
        if column >= len(rows[line]) - 1:
            line += 1
            continue
        block_end, width = line, 0
        while block_end < end and column < len(rows[block_end]) - 1:
            width = max(width, len(rows[block_end][column]) + _PADDING)
            block_end += 1
        width = -(-width // _TAB_WIDTH) * _TAB_WIDTH
        for index in range(line, block_end):
            widths[index][column] = width
        _layout(rows, widths, column + 1, line, block_end)
        line = block_end


def stack_key(locations: Iterable[LocationInfo]) -> str:
    """Go's ``@ 0x... 0x...`` record key."""
    return "@" + "".join(f" {location.address:#x}" for location in locations)


def stack_record(locations: Iterable[LocationInfo]) -> list[str]:
    """One ``#\\tPC\\tfunction+offset\\tfile:line`` line per frame, then a blank line."""
    lines = [f"#\t{loc.address:#x}\t{loc.function}+{loc.offset:#x}\t{loc.filename}:{loc.line}"
             for loc in locations]
    lines.append("")
    return lines
