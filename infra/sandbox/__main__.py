"""python -m infra.sandbox up [--prefect] | down | status"""

import argparse
import json
import sys

from infra import sandbox


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.sandbox", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--prefect", action="store_true", help="also start a Prefect server")
    parser.add_argument("--bare", action="store_true", help="leave the stack to bootstrap")
    args = parser.parse_args()
    if args.action == "up":
        sandbox.up(with_prefect=args.prefect, bare=args.bare)
    elif args.action == "down":
        sandbox.down()
    else:
        info = sandbox.connection()
        info["s3"] = {k: v for k, v in info["s3"].items() if k != "secret_key"}
        print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
