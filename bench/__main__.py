"""Run the benchmarks and print one table per section: ``python -m bench [section ...]``.

A section is a module in ``SECTIONS`` exposing ``TITLE``, ``COLUMNS`` (key,
header, format) triples (a None value prints as "-"), ``run() -> list[dict]``
and ``summary(rows) -> list[str]`` (its acceptance lines). Add a benchmark by
writing such a module and naming it in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.console import Console
from rich.table import Table

SECTIONS = ["journal", "wire", "cluster", "failover", "storage"]
ON_REQUEST = ["drill"]  # needs a deployed cluster (the lab); run by name only


def render(title: str, columns, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, (_, header, _) in enumerate(columns):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("-" if row[k] is None else fmt.format(row[k]) for k, _, fmt in columns))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    known = SECTIONS + ON_REQUEST
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="section",
        help=f"{', '.join(SECTIONS)} (the default), or {', '.join(ON_REQUEST)} (by name only)",
    )
    names = parser.parse_args(argv).sections or SECTIONS
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(known)}")
    console = Console(width=None if sys.stdout.isatty() else 160)  # logs keep whole tables
    for name in names:
        section = importlib.import_module(f"bench.{name}")
        with console.status(f"running {name} ..."):
            rows = section.run()
        console.print(render(section.TITLE, section.COLUMNS, rows))
        for line in section.summary(rows):
            console.print(line, soft_wrap=True)


if __name__ == "__main__":
    main()
