"""python -m infra.sandbox up [--prefect] | down | status | idle [--seconds N]"""

import argparse
import json
import os
import sys
import time

from infra import sandbox


def idle_load(seconds: float) -> float:
    """Cores busy on the whole machine over `seconds` (/proc/stat's first line: all but idle and
    iowait, in USER_HZ ticks)."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)

    busy0, total0 = ticks()
    time.sleep(seconds)
    busy1, total1 = ticks()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.sandbox", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "idle"])
    parser.add_argument("--seconds", type=float, default=15, help="idle: how long to measure")
    parser.add_argument("--prefect", action="store_true", help="also start a Prefect server")
    parser.add_argument("--bare", action="store_true", help="leave the stack to bootstrap")
    args = parser.parse_args()
    if args.action == "up":
        sandbox.up(with_prefect=args.prefect, bare=args.bare)
    elif args.action == "idle":
        cores = idle_load(args.seconds)
        print(f"[sandbox] idle load: {cores:.2f} of {os.cpu_count()} cores busy over "
              f"{args.seconds:.0f} s (/proc/stat, everything on the machine)")  # fmt: skip
    elif args.action == "down":
        sandbox.down()
    else:
        info = sandbox.connection()
        info["s3"] = {k: v for k, v in info["s3"].items() if k != "secret_key"}
        print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
