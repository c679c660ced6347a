"""The one table printer of the CLI: columns as wide as their widest cell.

Every command that prints rows (``job list``, ``job sites``, ``provision list``,
``compare``, ``bench``) formats them here, so their tables look alike: two
spaces between columns, cells left-aligned unless their column is named in
``right`` (numbers), no trailing spaces, and with ``rule`` a line of dashes
under the header. The cells are text already: what a value looks like is the
caller's business.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

GAP = "  "


def format_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Collection[str] = (),
    rule: bool = False,
) -> str:
    """The header, an optional rule and one line per row, without a final newline.

    ``right`` names the columns (by their header) whose cells are right-aligned.
    """
    body = [tuple(cells) for cells in rows]
    for cells in body:
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells for {len(header)} columns: {cells}")
    unknown = set(right).difference(header)
    if unknown:
        raise ValueError(f"no column {sorted(unknown)} to right-align in {list(header)}")
    widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]
    align = [str.rjust if title in right else str.ljust for title in header]

    def line(cells: Sequence[str]) -> str:
        return GAP.join(
            pad(cell, width) for pad, cell, width in zip(align, cells, widths, strict=True)
        ).rstrip()

    lines = [line(header)]
    if rule:
        lines.append(line(["-" * width for width in widths]))
    lines += [line(cells) for cells in body]
    return "\n".join(lines)
