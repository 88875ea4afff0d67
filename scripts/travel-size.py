#!/usr/bin/env python3
"""What a device call would carry: the repo's tracked files and untracked files that git does
not ignore (as they are on disk), plus the carried paths named as arguments, against the device
tool's limit of 64 MiB. Exit code 1, naming the largest files, when over it.
Usage: scripts/travel-size.py [--reserve MIB] [CARRIED_PATH ...]   (run from anywhere inside the repo)
--reserve MIB counts MIB for carried folders not built yet (the test suite reserves room for
gpu-prepare.sh's device-bin/ and .whl/, 4 MiB on 2026-12-08, this way)."""
import os
import subprocess
import sys

LIMIT = 64 * 2**20


def size(path):
    if os.path.islink(path) or os.path.isfile(path):
        return [(os.lstat(path).st_size, path)]
    out = []
    for root, _, files in os.walk(path):
        out += [(os.lstat(os.path.join(root, f)).st_size, os.path.join(root, f)) for f in files]
    return out


def usage(msg):
    print(f"travel-size: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    os.chdir(top)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = [s for p in sorted(set(listed)) if p and os.path.lexists(p) for s in size(p)]
    args = sys.argv[1:]
    reserve = 0
    if args[:1] == ["--reserve"]:
        try:
            reserve, args = int(float(args[1]) * 2**20), args[2:]
        except (IndexError, ValueError):
            usage("--reserve needs a number of MiB")
    carried = {}
    for c in args:
        if not os.path.lexists(c):
            usage(f"carried path {c} does not exist")
        carried[c] = size(c)
    total = sum(s for s, _ in tree) + sum(s for v in carried.values() for s, _ in v) + reserve
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    parts = ", ".join([f"repo files {mib(sum(s for s, _ in tree))}"] + [f"{c} {mib(sum(s for s, _ in v))}" for c, v in carried.items()] + ([f"reserved {mib(reserve)}"] if reserve else []))
    print(f"a device call carries {mib(total)} of {mib(LIMIT)} ({parts}); {mib(LIMIT - total)} to spare")
    if total > LIMIT:
        print("over the device tool's limit; the largest files:", file=sys.stderr)
        for s, p in sorted(tree + [x for v in carried.values() for x in v], reverse=True)[:8]:
            print(f"  {mib(s):>10}  {p}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
