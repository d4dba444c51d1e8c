"""``meshproxy run | check | version``: the command line of the sidecar.

Flags override ``MESHPROXY_*`` environment settings.  ``check`` validates a
bootstrap file and prints every problem as ``file:line: field: message``
(exit 2); ``run`` serves it until SIGTERM/SIGINT.

It must not hold runtime logic: ``runtime`` does the serving.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from meshproxy import __version__
from meshproxy.config import Bootstrap, ConfigError, load_bootstrap
from meshproxy.settings import Settings

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshproxy", description="meshproxy sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the listeners of a bootstrap file")
    run.add_argument("--config", type=Path, help="bootstrap YAML (env MESHPROXY_CONFIG)")
    run.add_argument("--workers", type=int, help="worker processes (env MESHPROXY_WORKERS)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--drain-timeout", type=float, help="seconds; overrides the bootstrap")
    check = sub.add_parser("check", help="validate a bootstrap file")
    check.add_argument("--config", type=Path, help="bootstrap YAML (env MESHPROXY_CONFIG)")
    sub.add_parser("version", help="print the version")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("config", "workers", "log_level", "drain_timeout")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _load(settings: Settings) -> Bootstrap | None:
    if settings.config is None:
        print("error: no config: give --config FILE or set MESHPROXY_CONFIG", file=sys.stderr)
        return None
    try:
        return load_bootstrap(settings.config)
    except ConfigError as exc:
        for where, message in exc.problems:
            print(f"{where}: {message}", file=sys.stderr)
        return None


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("meshproxy")
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        from meshproxy import fastpath

        print(f"meshproxy {__version__} fastpath={fastpath.IMPLEMENTATION}")
        return 0
    try:
        settings = _settings(args)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            print(f"error: setting {field}: {err['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    boot = _load(settings)
    if boot is None:
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{settings.config}: ok ({len(boot.listeners)} listeners)")
        return 0
    _setup_logging(settings.log_level)
    from meshproxy.runtime import run

    assert settings.config is not None
    return run(boot, settings, settings.config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
