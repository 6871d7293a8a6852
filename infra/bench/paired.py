"""Time two shell commands in alternation and compare them.

    .venv/bin/python -m infra.bench.paired --a 'CMD_A' --b 'CMD_B' -n 3

One uncounted warm-up pair (`--warmup`), then `n` pairs, each A then B, every command a fresh
`bash -c` with its output discarded. Alternating means each pair ran under about the same load, so
the ratio A/B of a pair is fair even on a busy machine, where the walls alone are not. The report
gives, per side, the wall times (min, median, max) and the peak RSS in MiB (of the largest single
process of a run, as the kernel counts it: `ru_maxrss` of wait4; ~14 MiB, the size of the small
launcher each run starts from, is its floor), then the median of the per-pair ratios with their
range: a wide range means the machine was noisy, quote it.

From Python: `compare(a, b, n)` returns a `Comparison` (`.report()`, `.as_dict()`); a command
that exits non-zero raises `CommandFailed`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass


class CommandFailed(Exception):
    def __init__(self, side: str, command: str, exit_code: int) -> None:
        self.side, self.command, self.exit_code = side, command, exit_code
        super().__init__(f"{side} exited {exit_code}: {command}")


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_mib: float
    exit_code: int


@dataclass(frozen=True)
class Side:
    """The counted runs of one command."""

    command: str
    walls: tuple[float, ...]
    peak_rss_mib: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.walls)

    def line(self, label: str) -> str:
        return (
            f"{label} wall s  min {min(self.walls):.2f}  median {self.median_s:.2f}  "
            f"max {max(self.walls):.2f}   peak RSS {self.peak_rss_mib:.0f} MiB   ({self.command})"
        )


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    ratios: tuple[float, ...]  # A wall / B wall, one per counted pair

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def report(self) -> str:
        times_faster = statistics.median(1 / r for r in self.ratios)
        return "\n".join([
            self.a.line("A"),
            self.b.line("B"),
            f"A/B wall  median {self.median_ratio:.3f}  (min {min(self.ratios):.3f}, "
            f"max {max(self.ratios):.3f}, {len(self.ratios)} pairs)",
            f"B/A (how many times faster A is)  median {times_faster:.3f}",
        ])  # fmt: skip

    def as_dict(self) -> dict:
        return {
            "a_median_s": round(self.a.median_s, 3),
            "a_peak_rss_MiB": round(self.a.peak_rss_mib, 1),
            "b_median_s": round(self.b.median_s, 3),
            "b_peak_rss_MiB": round(self.b.peak_rss_mib, 1),
            "a_over_b_median": round(self.median_ratio, 4),
            "a_over_b_range": [round(min(self.ratios), 4), round(max(self.ratios), 4)],
            "pairs": len(self.ratios),
        }


def time_command(command: str) -> Run:
    """Run `command` through bash, output discarded; its wall time, peak RSS and exit code.

    Measured by a small process of its own (this file as a script, `--one`): the kernel carries a
    parent's high-water RSS into the children it spawns, so a command spawned straight from a big
    process (a bench that has imported a lot) would report that size as its own."""
    launcher = [sys.executable, "-S", __file__, "--one", command]
    out = subprocess.run(launcher, capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    return Run(found["wall_s"], found["peak_rss_mib"], found["exit_code"])


def measure(command: str) -> Run:
    """`time_command`'s launcher side: spawn, wait4 (it hands back the child's rusage), report."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Run(wall, usage.ru_maxrss / 1024, proc.returncode)  # ru_maxrss: KiB on Linux


def compare(a: str, b: str, n: int = 3, warmup: int = 1) -> Comparison:
    """`warmup` uncounted pairs, then `n` counted pairs, each A then B."""
    if n < 1 or warmup < 0:
        raise ValueError(f"need n >= 1 and warmup >= 0, got n={n}, warmup={warmup}")
    counted: dict[str, list[Run]] = {"A": [], "B": []}
    for pair in range(warmup + n):
        for label, command in (("A", a), ("B", b)):
            run = time_command(command)
            if run.exit_code != 0:
                raise CommandFailed(label, command, run.exit_code)
            if pair >= warmup:
                counted[label].append(run)

    def side(label: str, command: str) -> Side:
        runs = counted[label]
        return Side(command, tuple(r.wall_s for r in runs), max(r.peak_rss_mib for r in runs))

    ratios = tuple(x.wall_s / y.wall_s for x, y in zip(counted["A"], counted["B"], strict=True))
    return Comparison(side("A", a), side("B", b), ratios)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"] and len(argv) == 2:  # time_command's launcher
        print(json.dumps(asdict(measure(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="the command measured")
    parser.add_argument("--b", required=True, help="the yardstick: a baseline or a limit")
    parser.add_argument("-n", type=int, default=3, help="counted pairs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted pairs first (default 1)")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b, args.n, args.warmup)
    except CommandFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
