"""``python -m bench`` (``make bench``): every benchmark, one stage after another,
each printing its own table.

Stages, in order: ``proxy`` (the proxy table of ``bench.proxy``), ``parser``
(requests parsed per second, ``bench.parser``), ``push`` (the control plane's
push fan-out, ``bench.push``) and ``scheduler`` (pods placed per second,
``bench.scheduler``).

Options of its own (the rest go to ``bench.proxy``):
  --stages proxy,parser,...  run only these stages (in the order above)
  --no-proxy, --no-parser, --no-push, --no-scheduler   skip one stage
  --push-only                 the same as ``--stages push``
  --push-watchers 10,100,1000 the push stage's fleet sizes
  --quick                     shortens every stage (and goes to the proxy table too)
This module picks and runs stages; it must not measure anything itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("proxy", "parser", "push", "scheduler")
TITLES = {
    "proxy": "proxy table (requests/s and latency through each proxy)",
    "parser": "parser (HTTP/1.1 requests parsed per second, one process)",
    "push": "push fan-out (time from one write until N sidecars have ACKed it)",
    "scheduler": "scheduler (pods placed per second)",
}
QUICK_PUSH_WATCHERS = "10,100"


class StageError(ValueError):
    """The stage options contradict each other or name an unknown stage."""


@dataclass(frozen=True)
class Plan:
    """Which stages run, with what arguments each one gets."""

    stages: tuple[str, ...]
    quick: bool
    proxy_args: tuple[str, ...]
    push_args: tuple[str, ...]
    scheduler_args: tuple[str, ...]
    parser_rounds: int
    parser_seconds: float


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This module's options, and what is left for the proxy table."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--stages", default=None)
    for stage in STAGES:
        parser.add_argument(f"--no-{stage}", action="store_true")
    parser.add_argument("--push-only", action="store_true")
    parser.add_argument("--push-watchers", default=None)
    own, rest = parser.parse_known_args(argv)
    # --quick belongs to every stage, the proxy table included: it stays in `rest`.
    own.quick = "--quick" in rest
    return own, rest


def select_stages(own: argparse.Namespace) -> tuple[str, ...]:
    """The stages to run, in their fixed order; StageError when the options clash."""
    if own.push_only and own.stages is not None:
        raise StageError("--push-only and --stages exclude each other")
    if own.push_only:
        chosen = {"push"}
        if own.no_push:
            raise StageError("--no-push and --push-only exclude each other")
    elif own.stages is not None:
        chosen = {name.strip() for name in own.stages.split(",") if name.strip()}
        unknown = sorted(chosen - set(STAGES))
        if unknown:
            raise StageError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    else:
        chosen = set(STAGES)
    skipped = {stage for stage in STAGES if getattr(own, f"no_{stage}")}
    selected = tuple(stage for stage in STAGES if stage in chosen - skipped)
    if not selected:
        raise StageError("no stage left to run")
    return selected


def plan(argv: list[str]) -> Plan:
    """Read the command line into a Plan; StageError when it cannot be run."""
    own, rest = split_args(argv)
    stages = select_stages(own)
    proxy_own = [arg for arg in rest if arg != "--quick"]
    if proxy_own and "proxy" not in stages:
        raise StageError(f"options for the proxy table ({' '.join(proxy_own)}) but no proxy stage")
    watchers = own.push_watchers or (QUICK_PUSH_WATCHERS if own.quick else "10,100,1000")
    push_args = ["--watchers", watchers]
    scheduler_args: list[str] = []
    if own.quick:
        push_args += ["--writes", "1"]
        scheduler_args = ["--rounds", "1", "--pods", "1000", "--nodes", "500"]
    return Plan(
        stages=stages,
        quick=own.quick,
        proxy_args=tuple(rest),
        push_args=tuple(push_args),
        scheduler_args=tuple(scheduler_args),
        parser_rounds=1 if own.quick else 5,
        parser_seconds=0.1 if own.quick else 0.4,
    )


def runners(p: Plan) -> dict[str, Callable[[], int]]:
    """One callable per stage, imported late so a stage's dependencies load only when it runs."""

    def run_proxy() -> int:
        from bench import proxy

        return proxy.main(list(p.proxy_args))

    def run_parser() -> int:
        from bench import parser

        parser.main(rounds=p.parser_rounds, seconds=p.parser_seconds)
        return 0

    def run_push() -> int:
        from bench import push

        return push.main(list(p.push_args))

    def run_scheduler() -> int:
        from bench import scheduler

        scheduler.main(list(p.scheduler_args))
        return 0

    return {
        "proxy": run_proxy,
        "parser": run_parser,
        "push": run_push,
        "scheduler": run_scheduler,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        from bench import proxy

        return proxy.main(["--help"])
    try:
        p = plan(argv)
    except StageError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    run = runners(p)
    failed: list[str] = []
    for index, stage in enumerate(p.stages):
        if index:
            print()
        print(f"== {TITLES[stage]}", flush=True)
        # One stage failing (say, a missing nginx) must not hide the others' tables.
        status = run[stage]()
        if status != 0:
            failed.append(f"{stage} (exit {status})")
    if failed:
        print(f"bench: failed stage(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
