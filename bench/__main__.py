"""Run the benchmarks and print one table per section: ``python -m bench [section ...]``;
``--json`` prints one JSON document with every figure instead.

A section is a module in ``SECTIONS`` exposing ``TITLE``, ``COLUMNS`` (key,
header, format) triples (a None value prints as "-"), ``run() -> list[dict]``
and ``summary(rows) -> list[str]`` (its acceptance lines). Add a benchmark by
writing such a module and naming it in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
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
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document with every figure of every section run (and the "
        "machine's load average and the commit), instead of tables, to compare commits",
    )
    args = parser.parse_args(argv)
    names = args.sections or SECTIONS
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; known: {', '.join(known)}")
    # progress on stderr when the document goes to stdout
    console = Console(
        width=None if sys.stdout.isatty() else 160,  # logs keep whole tables
        stderr=args.json,
    )
    doc = {"commit": _commit(), "cpus": os.cpu_count(), "sections": {}}
    doc["load_average_before"] = os.getloadavg()
    for name in names:
        section = importlib.import_module(f"bench.{name}")
        with console.status(f"running {name} ..."):
            rows = section.run()
        doc["sections"][name] = {"title": section.TITLE, "rows": rows}
        # the named figures DESIGN section 5 promises, at the top level
        doc.update(getattr(section, "figures", lambda rows: {})(rows))
        if args.json:
            continue
        console.print(render(section.TITLE, section.COLUMNS, rows))
        for line in section.summary(rows):
            console.print(line, soft_wrap=True)
    doc["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
