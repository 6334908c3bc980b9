"""Run many seeded simulator schedules: ``python -m tests.sim.run --seeds N``.

Ends with exactly one summary line, ``sim: N schedules, V violations``, and
exits non-zero when V > 0. Each failing seed is printed with the command
that replays it verbosely.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from .schedules import UNSAFE_RULES, run_schedule


def _run_range(args: tuple[int, int, str | None]) -> list:
    start, count, unsafe = args
    return [run_schedule(s, unsafe=unsafe) for s in range(start, start + count)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__)
    p.add_argument("--seeds", type=int, default=1000, help="number of schedules to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, help="replay one seed, printing every fault")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument(
        "--unsafe",
        choices=sorted(UNSAFE_RULES),
        help="test-only: break this safety rule in the core (the checker must object)",
    )
    a = p.parse_args(argv)
    if a.seed is not None:
        out = run_schedule(a.seed, unsafe=a.unsafe, verbose=True)
        print(
            f"seed {out.seed} ({out.kind}): {out.proposals} proposals, {out.acked} acknowledged,"
            f" {out.messages} messages: {out.violation or 'ok'}"
        )
        print(f"sim: 1 schedules, {1 if out.violation else 0} violations")
        return 1 if out.violation else 0

    t0 = time.monotonic()
    chunk = 50
    work = [
        (s, min(chunk, a.start + a.seeds - s), a.unsafe)
        for s in range(a.start, a.start + a.seeds, chunk)
    ]
    outcomes = []
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            for batch in pool.map(_run_range, work):
                outcomes.extend(batch)
    else:
        for w in work:
            outcomes.extend(_run_range(w))
    bad = [o for o in outcomes if o.violation]
    unsafe = f" --unsafe {a.unsafe}" if a.unsafe else ""
    for o in bad:
        print(f"VIOLATION seed={o.seed} ({o.kind}): {o.violation}", file=sys.stderr)
        print(f"  replay: python -m tests.sim.run --seed {o.seed}{unsafe}", file=sys.stderr)
    acked = sum(o.acked for o in outcomes)
    print(
        f"{len(outcomes)} schedules in {time.monotonic() - t0:.1f}s, "
        f"{acked} acknowledged writes checked",
        file=sys.stderr,
    )
    print(f"sim: {len(outcomes)} schedules, {len(bad)} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
