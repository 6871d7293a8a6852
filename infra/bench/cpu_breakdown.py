"""Where a command's CPU goes on this machine, by process name (a script, not a test).

    .venv/bin/python -m infra.bench.cpu_breakdown -- bash -c 'CMD'

Runs the command once while sampling /proc every `--interval` s: per process name, the CPU
seconds (user + system of each process itself; one that lives shorter than an interval is missed,
so the machine's busy CPU seconds are given beside the sum), the machine's busy cores and the wall
time. Every process on the machine is counted, not only the
command's: the sandbox's servers (sshd, dockerd, postgres, the S3 endpoint) do a backup's work
too. That is `pidstat` without sysstat, which the project does not install.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def sample() -> dict[int, tuple[str, int]]:
    """pid -> (name, CPU ticks of the process itself)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry)] = (name, int(fields[11]) + int(fields[12]))  # utime, stime
    return found


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def breakdown(argv: list[str], interval: float = 0.2) -> dict:
    first = sample()
    last = dict(first)
    busy0, total0 = machine_busy()
    started = time.monotonic()
    proc = subprocess.Popen(argv)
    while proc.poll() is None:
        time.sleep(interval)
        last.update(sample())  # a pid that ended keeps its last sampled ticks
    wall = time.monotonic() - started
    last.update(sample())
    busy1, total1 = machine_busy()
    by_name: collections.Counter[str] = collections.Counter()
    for pid, (name, ticks) in last.items():
        before = first.get(pid)
        by_name[name] += ticks - (before[1] if before and before[0] == name else 0)
    cores = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "machine_busy_cores": round(cores, 2),
        "machine_cpu_s": round(cores * wall, 1),
        "counted_cpu_s": round(sum(by_name.values()) / HZ, 1),
        "cpu_s_by_process": {
            name: round(ticks / HZ, 2) for name, ticks in by_name.most_common() if ticks > 0
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        parser.error("give a command after --")
    result = breakdown(argv, args.interval)
    print(json.dumps(result, indent=2))
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
