"""Ingest, this checkout against another commit, at once: a change of a few
per cent told apart on a machine whose speed swings more than that.

    .venv/bin/python bench/ingest_ab.py --base 2867a4f --rounds 6

`bench/ingest.py` alone measured the same code at 16,490 and 24,022 messages/s
a few minutes apart (docs/performance.md, sixth pass). Here each round runs
`ingest.py` (no subscription) in this checkout and in a worktree of ``--base``
at the same time, each pinned to a core of its own, and swaps the cores from
one round to the next: a slow minute slows both, so each round's ratio says
what the change did. Needs two cores; the worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine

_RATE = re.compile(r"ingest with 0 subscriptions: ([0-9,]+) messages/s")


def rate(output: str) -> float:
    found = _RATE.search(output)
    if found is None:
        raise SystemExit(f"ingest.py printed no rate:\n{output}")
    return float(found.group(1).replace(",", ""))


def git(*args: str, check: bool = True) -> str:
    """A git command in this checkout; its output."""
    return subprocess.run(["git", "-C", str(REPO), *args], check=check, capture_output=True, text=True).stdout.strip()


def start(checkout: Path, core: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    """``ingest.py`` of ``checkout`` (its own ``app``: common.py puts its
    checkout first on the path), pinned to ``core``."""
    command = [sys.executable, str(checkout / "bench" / "ingest.py"), "--subscribers", "0",
               "--messages", str(args.messages), "--passes", str(args.passes)]
    return subprocess.Popen(command, cwd=checkout / "bench", stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to measure against (any git revision)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--passes", type=int, default=3, help="ingest.py's passes per run (its median is the run's figure)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs two cores: the two checkouts run at once, one on each")
    base, here = git("rev-parse", "--short", args.base), git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "app", "bench")
    print(f"machine: {machine()}")
    print(f"ingest, this checkout ({here}{', with changes' if dirty else ''}) against {base}, "
          f"at once on cores {cores[0]} and {cores[1]}, swapped each round")
    worktree = Path(tempfile.mkdtemp(prefix="ingest-ab-"))
    git("worktree", "add", "--detach", "--quiet", str(worktree), base)
    ratios = []
    try:
        for round_ in range(args.rounds):
            mine, theirs = (cores[0], cores[1]) if round_ % 2 == 0 else (cores[1], cores[0])
            new, old = start(REPO, mine, args), start(worktree, theirs, args)
            new_rate, old_rate = rate(new.communicate()[0]), rate(old.communicate()[0])
            ratios.append(new_rate / old_rate)
            print(f"  round {round_ + 1}: {new_rate:,.0f} against {old_rate:,.0f} messages/s: {ratios[-1]:.2f}×")
    finally:
        git("worktree", "remove", "--force", str(worktree), check=False)
    faster = sum(ratio > 1 for ratio in ratios)
    print(f"this checkout faster in {faster} rounds of {len(ratios)}: {min(ratios):.2f}–{max(ratios):.2f}×, "
          f"{statistics.fmean(ratios):.2f}× on the mean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
