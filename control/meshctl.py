"""``meshctl``: the operator's command line over the control-plane API.

    meshctl [--url URL] [--token T] get routes|policies|access|services|proxies|history
            [NAME] [-o table|yaml|json]
    meshctl apply -f FILE.yaml        # one or more documents, see below
    meshctl delete KIND NAME
    meshctl rollback VERSION
    meshctl status                    # proxies: id, service, acked version, last error

``--url`` and ``--token`` default to ``MESHCTL_URL`` (else
``http://127.0.0.1:15010``) and ``MESHCTL_TOKEN``.

An apply file holds YAML documents, each one resource: ``kind`` (``RouteTable``,
``Policy`` or ``Access``) plus the resource's own fields as the API takes them,
``service`` included::

    kind: Policy
    service: ratings
    subsets: {v1: {labels: {version: v1}}}
    ---
    kind: RouteTable
    service: ratings
    rules: [{backends: [{subset: v1}]}]

Every document is checked for its kind and service before any is sent; they are
then applied in file order, and the first refusal stops the rest.

Only HTTP and presentation live here (stdlib ``urllib``, no event loop); the
control plane does every check that matters.  Errors are one line, or the
field list of a 422; the exit status is 0, 1 (the API refused), or 2 (usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

DEFAULT_URL = "http://127.0.0.1:15010"
KINDS = {"routes": "RouteTable", "policies": "Policy", "access": "Access"}
KIND_BY_NAME = {v.lower(): k for k, v in KINDS.items()} | {k: k for k in KINDS}
KIND_BY_NAME |= {"route": "routes", "routetable": "routes", "policy": "policies"}


class Refused(Exception):
    """What to tell the user instead of a result; the exit status is 1."""


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise Refused(_http_error(exc, method, path)) from None
        except urllib.error.URLError as exc:
            reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
            raise Refused(f"cannot reach the control plane at {self.url}: {reason}") from None
        except (TimeoutError, OSError) as exc:
            raise Refused(f"cannot reach the control plane at {self.url}: {exc}") from None
        except ValueError:
            raise Refused(f"{method} {path}: the answer is not JSON") from None


def _http_error(exc: urllib.error.HTTPError, method: str, path: str) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    lines = [f"{method} {path}: {exc.code} {error or exc.reason}"]
    if exc.code == 401:
        lines.append("  give a token with --token or MESHCTL_TOKEN")
    problems = body.get("problems", []) if isinstance(body, dict) else []
    lines.extend(f"  {p.get('field')}: {p.get('message')}" for p in problems)
    return "\n".join(lines)


# -- presentation --------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; ``-`` for None; no trailing blanks."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    seconds = max(0, int(now - when))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _backends(rule: dict[str, Any]) -> str:
    parts = []
    for b in rule.get("backends", []):
        target = b.get("service") or ""
        if b.get("subset"):
            target = f"{target}:{b['subset']}" if target else b["subset"]
        parts.append(f"{target or '(all)'}={b.get('weight', 1)}")
    return ",".join(parts)


def resource_rows(kind: str, items: list[dict[str, Any]]) -> tuple[list[str], list[list[object]]]:
    if kind == "routes":
        headers = ["SERVICE", "RULES", "FIRST RULE BACKENDS"]
        rows: list[list[object]] = [
            [i["service"], len(i.get("rules", [])), _backends((i.get("rules") or [{}])[0])]
            for i in items
        ]
    elif kind == "policies":
        headers = ["SERVICE", "SUBSETS", "LOAD BALANCER", "RATE LIMITS"]
        rows = [
            [
                i["service"],
                ",".join(sorted(i.get("subsets") or {})) or "-",
                (i.get("load_balancer") or {}).get("policy"),
                len(i.get("rate_limits") or []),
            ]
            for i in items
        ]
    else:
        headers = ["SERVICE", "ACTION", "RULES"]
        rows = [[i["service"], i.get("action"), len(i.get("rules") or [])] for i in items]
    return headers, rows


def proxy_rows(data: dict[str, Any], now: float) -> tuple[list[str], list[list[object]]]:
    headers = ["ID", "SERVICE", "ACKED", "SENT", "LAST ERROR", "LAST SEEN"]
    rows: list[list[object]] = []
    for p in data["proxies"]:
        error = p.get("last_error")
        if error:
            error = f"v{p.get('error_version')}: {error.splitlines()[0][:60]}"
        rows.append(
            [p["id"], p["service"], p.get("acked_version"), p.get("sent_version"), error,
             _ago(p.get("last_seen"), now)]
        )  # fmt: skip
    return headers, rows


# -- commands ------------------------------------------------------------------


def _emit(data: object, output: str, out: TextIO, render: Any) -> None:
    if output == "json":
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif output == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        headers, rows = render()
        out.write(table(headers, rows) + "\n")


def cmd_get(api: Api, what: str, name: str | None, output: str, out: TextIO) -> None:
    now = time.time()
    if what in KINDS:
        if name is not None:
            items = [api.call("GET", f"/v1/{what}/{name}")]
        else:
            flag = {"routes": "routes", "policies": "policy", "access": "access"}[what]
            services = api.call("GET", "/v1/services")["services"]
            items = [api.call("GET", f"/v1/{what}/{s['name']}") for s in services if s[flag]]
        data: object = items if name is None else items[0]
        _emit(data, output, out, lambda: resource_rows(what, items))
    elif what == "services":
        listed = api.call("GET", "/v1/services")
        services = [s for s in listed["services"] if name is None or s["name"] == name]
        if name is not None and not services:
            raise Refused(f"no service {name!r}")

        def services_table() -> tuple[list[str], list[list[object]]]:
            yes = {True: "yes", False: "-"}
            return ["NAME", "INSTANCES", "HEALTHY", "ROUTES", "POLICY", "ACCESS"], [
                [s["name"], s["instances"], s["healthy"], yes[s["routes"]], yes[s["policy"]],
                 yes[s["access"]]]
                for s in services
            ]  # fmt: skip

        _emit(services if name is None else services[0], output, out, services_table)
    elif what == "proxies":
        listed = api.call("GET", "/v1/proxies")
        if name is not None:
            listed["proxies"] = [p for p in listed["proxies"] if p["id"] == name]
            if not listed["proxies"]:
                raise Refused(f"no proxy {name!r}")
        _emit(listed, output, out, lambda: proxy_rows(listed, now))
    else:  # history
        if name is not None:
            if not name.isdigit():
                raise Refused(f"a version is a number, not {name!r}")
            one = api.call("GET", f"/v1/history/{name}")
            _emit(one, "yaml" if output == "table" else output, out, None)
            return
        listed = api.call("GET", "/v1/history")

        def history_table() -> tuple[list[str], list[list[object]]]:
            return ["VERSION", "TIME", "ACTOR", "ACTION", "TARGET", "SUMMARY"], [
                [e["version"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
                 e["actor"], e["action"], e["target"], e["summary"]]
                for e in listed["entries"]
            ]  # fmt: skip

        _emit(listed, output, out, history_table)


def read_documents(path: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, service, body) of every document in an apply file, all checked
    before any is sent."""
    try:
        with open(path, encoding="utf-8") if path != "-" else sys.stdin as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise Refused(f"{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    found = []
    problems = []
    for n, doc in enumerate(documents, 1):
        if not isinstance(doc, dict):
            problems.append(f"  document {n}: expected a mapping with 'kind' and 'service'")
            continue
        body = dict(doc)
        kind = KIND_BY_NAME.get(str(body.pop("kind", "")).lower())
        service = body.get("service")
        if kind is None:
            problems.append(f"  document {n}: kind must be one of {', '.join(KINDS.values())}")
        elif not isinstance(service, str) or not service:
            problems.append(f"  document {n} ({KINDS[kind]}): 'service' is required")
        else:
            found.append((kind, service, body))
    if problems:
        raise Refused(f"{path}: nothing applied\n" + "\n".join(problems))
    if not found:
        raise Refused(f"{path}: no documents")
    return found


def cmd_apply(api: Api, path: str, out: TextIO) -> None:
    for kind, service, body in read_documents(path):
        try:
            written = api.call("PUT", f"/v1/{kind}/{service}", body)
        except Refused as exc:
            raise Refused(f"{kind}/{service} not applied: {exc}") from None
        out.write(f"{kind}/{service} applied (version {written['version']})\n")


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="meshctl", description="drive the meshproxy control plane"
    )
    parser.add_argument("--url", default=os.environ.get("MESHCTL_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("MESHCTL_TOKEN"))
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", help="list or show resources")
    get.add_argument("what", choices=[*KINDS, "services", "proxies", "history"])
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    apply = commands.add_parser("apply", help="create or replace resources from YAML")
    apply.add_argument("-f", "--filename", required=True, help="a YAML file, or - for stdin")
    delete = commands.add_parser("delete", help="delete a resource")
    delete.add_argument("kind", help="routes|policies|access (or RouteTable|Policy|Access)")
    delete.add_argument("name")
    rollback = commands.add_parser("rollback", help="restore the desired state of a version")
    rollback.add_argument("version", type=int)
    commands.add_parser("status", help="proxies: versions sent, acked, refused")
    args = parser.parse_args(argv)
    api = Api(args.url, args.token)
    try:
        if args.command == "get":
            cmd_get(api, args.what, args.name, args.output, out)
        elif args.command == "apply":
            cmd_apply(api, args.filename, out)
        elif args.command == "delete":
            kind = KIND_BY_NAME.get(args.kind.lower())
            if kind is None:
                raise Refused(f"unknown kind {args.kind!r}: use routes, policies or access")
            written = api.call("DELETE", f"/v1/{kind}/{args.name}")
            out.write(f"{kind}/{args.name} deleted (version {written['version']})\n")
        elif args.command == "rollback":
            written = api.call("POST", "/v1/rollback", {"version": args.version})
            out.write(f"rolled back to version {args.version} (now version {written['version']})\n")
        else:
            listed = api.call("GET", "/v1/proxies")
            headers, rows = proxy_rows(listed, time.time())
            out.write(f"control plane at version {listed['version']}\n")
            out.write(table(headers, rows) + "\n")
    except Refused as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
