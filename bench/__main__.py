"""``python -m bench`` (``make bench``): the proxy table of ``bench.proxy``, then
the control plane's push fan-out of ``bench.push``.

Options of its own (the rest go to ``bench.proxy``): ``--no-push`` skips the
push stage, ``--push-only`` runs only it, ``--push-watchers 10,100,1000`` sets
its fleet sizes.  It must not measure anything itself.
"""

from __future__ import annotations

import argparse
import sys

from bench import proxy, push


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This stage's options, and what is left for the proxy table."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--no-push", action="store_true")
    parser.add_argument("--push-only", action="store_true")
    parser.add_argument("--push-watchers", default="10,100,1000")
    own, rest = parser.parse_known_args(argv)
    return own, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return proxy.main(["--help"])
    own, rest = split_args(argv)
    if own.no_push and own.push_only:
        print("bench: --no-push and --push-only exclude each other", file=sys.stderr)
        return 2
    status = 0
    if not own.push_only:
        status = proxy.main(rest)
        if status != 0 or own.no_push:
            return status
    print("\npush fan-out (time from one write until N sidecars have ACKed it)", flush=True)
    return push.main(["--watchers", own.push_watchers])


if __name__ == "__main__":
    raise SystemExit(main())
