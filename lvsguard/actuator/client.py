"""The actuator's API client and the CLI commands that use it.

``lvsguard quarantine | restore | drain | weight | add | remove | ledger`` and
``lvsguard status --url`` talk to an actuator over its API; ``lvsguard/cli.py``
wires them: each command has ``setup_<name>(subparsers)``, which adds its
parser and sets ``func`` to ``run_<name>(args) -> int``. A refusal or an error
raises :class:`ClientError` (a ``LvsguardError``), which the CLI prints as
``lvsguard: refused: service web would have 1 healthy real server, min 2``.

Only the standard library is used (``urllib``): the CLI must work on a
director with nothing but lvsguard installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from lvsguard.actuator.health import real_server_health, service_health
from lvsguard.defaults import ACTUATOR_URL
from lvsguard.errors import ClientError, TokenFileError
from lvsguard.model import MAX_THRESHOLD, MAX_WEIGHT

DEFAULT_URL = ACTUATOR_URL
OK_RESULTS = ("applied", "recorded", "noop", "dry_run")


class ActuatorClient:
    """JSON over HTTP to one actuator; the token goes only into the Authorization header."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST an action; the outcome body for 2xx, ClientError with the actuator's message otherwise."""
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        headers = {"Accept": "application/json", "X-Lvsguard-Client": "cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _decode(response.read(), self.url + path)
        except urllib.error.HTTPError as exc:
            reply = _decode(exc.read(), self.url + path, status=exc.code)
            message = reply.get("error") or reply.get("message") or f"HTTP {exc.code}"
            if reply.get("path"):
                message = f"{reply['path']}: {message}"
            raise ClientError(str(message), status=exc.code, body=reply) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the actuator at {self.url}: {reason}") from None


def _decode(raw: bytes, where: str, *, status: int = 200) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise ClientError(f"{where}: HTTP {status} with a reply that is not JSON", status=status) from None
    if not isinstance(body, dict):
        raise ClientError(f"{where}: HTTP {status} with a reply that is not a JSON object", status=status)
    return body


# common options


def add_client_options(p: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token-file`` (the token may also come from LVSGUARD_TOKEN)."""
    p.add_argument(
        "--url",
        default=os.environ.get("LVSGUARD_URL", DEFAULT_URL),
        help=f"the actuator's address (default: $LVSGUARD_URL or {DEFAULT_URL})",
    )
    p.add_argument(
        "--token-file", help="file with the bearer token (NAME:TOKEN or TOKEN lines); default: $LVSGUARD_TOKEN"
    )
    p.add_argument("--token-name", help="which token of --token-file to use (default: the first)")


def client_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ActuatorClient:
    env = os.environ if env is None else env
    token = env.get("LVSGUARD_TOKEN", "").strip() or None
    if args.token_file:
        from lvsguard.actuator.auth import load_tokens  # imports Flask: not when the command line is parsed

        try:
            tokens = load_tokens({}, args.token_file)
        except TokenFileError as exc:
            raise ClientError(str(exc)) from None
        if args.token_name:
            if args.token_name not in tokens:
                raise ClientError(
                    f"{args.token_file}: no token named {args.token_name!r} ({', '.join(sorted(tokens))})"
                )
            token = tokens[args.token_name]
        elif tokens:
            token = next(iter(tokens.values()))
    return ActuatorClient(args.url, token)


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", help="service name from the config, or 'TCP 192.0.2.10:80' / 'FWM 1' (quoted)")
    p.add_argument("real_server", help="real server name from the config, or ADDRESS:PORT")


def _outcome(reply: Mapping[str, Any], out: TextIO) -> int:
    """Print an action's outcome in one line (and, in a cluster, a line per director); refusals raised already."""
    print(reply.get("message", ""), file=out)
    for name, state in sorted(reply.get("directors", {}).items()):
        print(f"  {name}: {state}", file=out)
    return 0 if reply.get("result") in OK_RESULTS else 1


def _action(args: argparse.Namespace, path: str, body: dict[str, Any], out: TextIO) -> int:
    reply = client_from_args(args).post(path, {"service": args.service, "real_server": args.real_server, **body})
    return _outcome(reply, out)


def _add_targets(p: argparse.ArgumentParser) -> None:
    """A bulk-capable command: one service and one or more of its real servers, or ``--file``."""
    p.add_argument("service", nargs="?", help="service name from the config, or 'TCP 192.0.2.10:80' / 'FWM 1' (quoted)")
    p.add_argument(
        "real_server", nargs="*", help="real server names from the config, or ADDRESS:PORT (several: one bulk action)"
    )
    p.add_argument(
        "--file",
        help="act on every real server this file lists, one 'SERVICE REAL_SERVER' a line ('-': standard input; "
        "# starts a comment): one bulk action",
    )


def read_targets(path: str, text: str) -> list[dict[str, str]]:
    """The targets of a ``--file``: one ``SERVICE REAL_SERVER`` a line; ClientError naming the line."""
    targets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        service, _, real_server = line.rpartition(" ")
        if not service.strip():
            raise ClientError(f"{path}:{number}: expected 'SERVICE REAL_SERVER', got {line!r}")
        targets.append({"service": service.strip(), "real_server": real_server})
    if not targets:
        raise ClientError(f"{path}: lists no real server")
    return targets


def _targets(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.file:
        if args.service or args.real_server:
            raise ClientError("give either --file or SERVICE REAL_SERVER..., not both")
        try:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            raise ClientError(f"{args.file}: {exc.strerror or exc}") from None
        return read_targets(args.file, text)
    if not args.service or not args.real_server:
        raise ClientError("name a service and at least one of its real servers, or give --file")
    return [{"service": args.service, "real_server": rs} for rs in args.real_server]


def _bulk_action(args: argparse.Namespace, action: str, body: dict[str, Any], out: TextIO) -> int:
    """One real server: the plain action; several: one bulk action, a line per target that was not done."""
    targets = _targets(args)
    client = client_from_args(args)
    if len(targets) == 1:
        return _outcome(client.post(f"/api/v1/{action}", {**targets[0], **body}), out)
    reply = client.post(f"/api/v1/bulk/{action}", {"targets": targets, **body})  # 207: some not done
    counts = reply.get("counts", {})
    print(f"{action}: " + ", ".join(f"{n} {result}" for result, n in sorted(counts.items())), file=out)
    failed = 0
    for target, result in zip(targets, reply.get("results", []), strict=False):
        if result.get("result") not in OK_RESULTS:
            failed += 1
            print(f"  {target['service']} {target['real_server']}: {result.get('message', '')}", file=out)
    for name, state in sorted(reply.get("directors", {}).items()):
        print(f"  {name}: {state}", file=out)
    return 1 if failed else 0


def _bounded(name: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high``, checked before anything is sent to the actuator."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {low}..{high}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


WEIGHT = _bounded("weight", 0, MAX_WEIGHT)
THRESHOLD = _bounded("threshold", 0, MAX_THRESHOLD)

# commands

Option = tuple[tuple[str, ...], dict[str, Any]]
FORCE: Option = (
    ("--force",),
    {"action": "store_true", "help": "skip the hold-down and the rate limit (never the quorum)"},
)
REASON: Option = (("--reason",), {"default": "", "help": "why, for the ledger"})


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[..., int],
    *options: Option,
    help: str,
    description: str,
    target: bool = True,
) -> argparse.ArgumentParser:
    """One subcommand: the real server it acts on (unless ``target`` is false), its own options, then the client's."""
    p = sub.add_parser(name, help=help, description=description)
    if target:
        _add_target(p)
    for flags, kwargs in options:
        p.add_argument(*flags, **kwargs)
    add_client_options(p)
    p.set_defaults(func=run)
    return p


def setup_quarantine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "quarantine",
        run_quarantine,
        REASON,
        FORCE,
        help="take real servers out (weight 0) until restored",
        description="Set a real server's weight to 0 with a manual hold; existing connections finish. "
        "The original weight is recorded; an alert never lifts a manual hold. Several real servers "
        "(or --file) are one bulk action: one batch, one etcd transaction with a cluster store.",
        target=False,
    )
    _add_targets(p)
    return p


def run_quarantine(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return _bulk_action(args, "quarantine", {"reason": args.reason, "force": args.force}, out)


def setup_restore(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "restore",
        run_restore,
        (
            ("--all-holders",),
            {"action": "store_true", "help": "also release the holds of alerts (they come back if still firing)"},
        ),
        (("--force",), {"action": "store_true", "help": "skip the hold-down"}),
        help="release the manual holds and bring real servers back",
        description="Release the manual holds of a real server; it comes back at its recorded weight "
        "(ramped when slow start is configured) once no alert holds it either. Several real servers "
        "(or --file) are one bulk action.",
        target=False,
    )
    _add_targets(p)
    return p


def run_restore(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return _bulk_action(args, "restore", {"all_holders": args.all_holders, "force": args.force}, out)


def setup_weight(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "weight",
        run_weight,
        (("weight",), {"type": WEIGHT, "help": f"0..{MAX_WEIGHT}"}),
        FORCE,
        help="set a real server's weight",
        description="Set a weight; on a held real server, the weight it will come back at.",
    )


def run_weight(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return _action(args, "/api/v1/weight", {"weight": args.weight, "force": args.force}, out)


def setup_add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "add",
        run_add,
        (
            ("--weight",),
            {
                "type": WEIGHT,
                "default": 1,
                "help": f"weight 0..{MAX_WEIGHT} (default 1; ramped when slow start is configured)",
            },
        ),
        (("--forward",), {"help": "masq|nat, route|dr, tunnel|ipip (default: the service's other real servers')"}),
        (
            ("--upper-threshold",),
            {"type": THRESHOLD, "default": 0, "help": "max connections; above it no new ones (0 = no limit)"},
        ),
        (
            ("--lower-threshold",),
            {
                "type": THRESHOLD,
                "default": 0,
                "help": "connections below which a real server over its upper threshold takes new ones again "
                "(0 = the kernel's default, 3/4 of the upper)",
            },
        ),
        help="add a real server to a service",
        description="Add a real server (nothing happens when it is already there).",
    )


def run_add(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    body: dict[str, Any] = {
        "weight": args.weight,
        "upper_threshold": args.upper_threshold,
        "lower_threshold": args.lower_threshold,
    }
    if args.forward:
        body["forward"] = args.forward
    return _action(args, "/api/v1/add", body, out)


def setup_remove(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "remove",
        run_remove,
        FORCE,
        help="delete a real server at once (drain it first)",
        description="Delete a real server now; its connections break. Use 'drain --delete' to let them finish.",
    )


def run_remove(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return _action(args, "/api/v1/remove", {"force": args.force}, out)


def setup_drain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "drain",
        run_drain,
        (("--timeout",), {"type": float, "help": "seconds to wait (default: the actuator's drain_timeout)"}),
        (("--delete",), {"action": "store_true", "help": "delete the real server once drained"}),
        REASON,
        (("--no-wait",), {"action": "store_true", "help": "start the drain and return"}),
        FORCE,
        help="weight 0, wait for connections to finish, optionally delete",
        description="Take a real server out (weight 0) and wait until its active connections reach 0 "
        "or the timeout; with --delete, delete it then. Shows the progress.",
    )


def run_drain(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    *,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: TextIO = sys.stderr,
) -> int:
    client = client_from_args(args)
    body: dict[str, Any] = {
        "service": args.service,
        "real_server": args.real_server,
        "delete": args.delete,
        "reason": args.reason,
        "force": args.force,
    }
    if args.timeout is not None:
        body["timeout"] = args.timeout
    reply = client.post("/api/v1/drain", body)
    print(reply.get("message", ""), file=out)
    job_id = reply.get("job_id")
    if args.no_wait or job_id is None:
        return 0 if reply.get("result") in OK_RESULTS else 1
    bar = ProgressBar(progress)
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}")
        bar.show(float(job.get("progress", 0.0)), str(job.get("message", "")))
        if job.get("state") != "running":
            bar.done()
            print(f"drain job {job_id}: {job.get('state')}: {job.get('message')}", file=out)
            return 0 if job.get("state") == "done" else 1
        sleep(poll)


class ProgressBar:
    """``[#####.....]  50% 2 active connections left`` redrawn in place on a terminal, one line per change otherwise."""

    WIDTH = 30

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def show(self, fraction: float, message: str) -> None:
        filled = int(round(max(0.0, min(1.0, fraction)) * self.WIDTH))
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:3.0f}% {message}"
        if line == self.last:
            return
        if self.tty:
            self.out.write("\r" + line.ljust(len(self.last)))
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self.last = line

    def done(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def setup_ledger(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "ledger",
        run_ledger,
        (("--active",), {"action": "store_true", "help": "only holds in force"}),
        (("--audit",), {"action": "store_true", "help": "show the audit events instead"}),
        (("--limit",), {"type": int, "default": 50, "help": "at most this many rows (1..1000)"}),
        (("--json",), {"action": "store_true", "help": "print the API's JSON"}),
        target=False,
        help="who holds which real server out, and the audit trail",
        description="Show the actuator's holds (newest first) and, with --audit, its audit events.",
    )


def run_ledger(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = client_from_args(args)
    if args.audit:
        reply = client.get(f"/api/v1/audit?limit={args.limit}")
        if args.json:
            print(json.dumps(reply, indent=2), file=out)
            return 0
        rows = [
            [e["at"], e["source"], e["actor"], e["action"], _rs(e), e["result"], e["message"]] for e in reply["events"]
        ]
        _table(["AT", "SOURCE", "ACTOR", "ACTION", "REAL SERVER", "RESULT", "MESSAGE"], rows, out)
        return 0
    reply = client.get(f"/api/v1/ledger?limit={args.limit}&active={'true' if args.active else 'false'}")
    if args.json:
        print(json.dumps(reply, indent=2), file=out)
        return 0
    rows = [[h["created_at"], h["state"], _rs(h), h["action"], _holder(h), h["reason"]] for h in reply["holds"]]
    _table(["SINCE", "STATE", "REAL SERVER", "ACTION", "HELD BY", "REASON"], rows, out)
    return 0


def _rs(row: Mapping[str, Any]) -> str:
    return f"{row['real_server']} of {row['service']}" if row.get("real_server") else str(row.get("service", ""))


def _holder(hold: Mapping[str, Any]) -> str:
    if hold["kind"] == "alert":
        return f"alert {hold['alertname'] or '?'} ({hold['holder']})"
    return f"{hold['source']} {hold['holder']}"


def _table(header: list[str], rows: list[list[Any]], out: TextIO) -> None:
    cells = [header, *[[("" if c is None else str(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if not rows:
        print("(none)", file=out)


def cluster_from_api(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``lvsguard status --cluster``: every director of the cluster and where each cluster hold is applied."""
    reply = client_from_args(args).get("/api/v1/cluster")
    if getattr(args, "json", False):
        print(json.dumps(reply, indent=2), file=out)
        return 0
    if reply["store"] != "etcd":
        print(f"{reply['director']}: no cluster store (cluster.store: {reply['store']}): one director", file=out)
        return 0
    up = {True: "up", False: "down", None: "unknown"}
    print(f"cluster {reply['cluster']}: etcd {up[reply['store_up']]} from {reply['director']}", file=out)
    table = reply.get("table")
    if table:
        print(
            f"table: revision {table['revision']} by {table['by'] or 'unknown'} at {table['at']} "
            f"({table['services']} services, {table['real_servers']} real servers)",
            file=out,
        )
    for problem in reply["problems"]:
        print(f"  problem: {problem}", file=out)
    rows = []
    for d in reply["directors"]:
        if d["stale"]:
            kernel = "stale (no announcement lately)"
        elif d["converged"]:
            kernel = f"converged ({len(d['applied'])} cluster holds)"
        else:
            kernel = ", ".join(
                part
                for part in (
                    f"{d['pending']} holds pending" if d["pending"] else "",
                    f"{d['drift']} drifted" if d["drift"] else "",
                    f"{d.get('table_pending', 0)} services unfinished" if d.get("table_pending") else "",
                    "" if d.get("table_matches", True) else "table behind",
                )
                if part
            )
        source = d.get("table_source", "config")
        rows.append(
            [
                d["director"],
                d["role"],
                ",".join(d["vips"]) or "-",
                kernel,
                f"r{d.get('table_revision', 0)}" if source == "cluster" else "own config",
                d["exporter"],
                up[d["store_up"]],
                d["actuator_url"] or "-",
            ]
        )
    _table(["DIRECTOR", "ROLE", "VIPS", "KERNEL", "TABLE", "EXPORTER", "ETCD", "ACTUATOR"], rows, out)
    print("", file=out)
    holds = []
    for h in reply["holds"]:
        applied = sorted(name for name, done in h["applied"].items() if done)
        missing = sorted(name for name, done in h["applied"].items() if not done)
        where = ", ".join(applied) or "-"
        if missing:
            where += f" (not on {', '.join(missing)})"
        holds.append([h["service"], h["real_server"], h["action"], h["holder"], where])
    _table(["SERVICE", "REAL SERVER", "ACTION", "HOLDER", "APPLIED ON"], holds, out)
    if reply.get("drains"):
        print("", file=out)
        drains = []
        for j in reply["drains"]:
            if j["state"] == "running":
                left = ", ".join(f"{name} {'-' if n is None else n}" for name, n in sorted(j["active"].items()))
                state = f"running until {j['deadline']} (active: {left or '-'})"
            else:
                state = f"{j['state']}: {j['message']}"
            owner = j["owner"] or ("-" if j["state"] != "running" else "none (being taken over)")
            drains.append(
                [j["service"], j["real_server"], "yes" if j["delete"] else "no", owner, " > ".join(j["owners"]), state]
            )
        _table(["SERVICE", "REAL SERVER", "DELETE", "OWNER", "OWNERS", "DRAIN"], drains, out)
    return 0 if all(d["converged"] for d in reply["directors"]) else 2


def status_from_api(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``lvsguard status --url URL``: the actuator's view (weights, connections, state, holds)."""
    reply = client_from_args(args).get("/api/v1/services")
    if getattr(args, "json", False):
        print(json.dumps(reply, indent=2), file=out)
        return 0
    if reply.get("dry_run"):
        print("actuator in dry-run mode: nothing is written to the kernel", file=out)
    probes = reply.get("probes", {}).get("state", "off")
    for svc in reply["services"]:
        name = f"{svc['name']} " if svc["name"] else ""
        print(
            f"{name}{svc['service']} ({svc['scheduler']})  healthy {service_health(svc, probes)}, "
            f"min {svc['min_healthy']}",
            file=out,
        )
        rows = []
        for rs in svc["real_servers"]:
            state = rs["state"]
            if rs["holds"]:
                state += " (" + ", ".join(_holder(h) for h in rs["holds"]) + ")"
            if rs["drift"]:
                state += f" drift: {rs['drift']}"
            rows.append(
                [
                    "  " + (rs["name"] or rs["real_server"]),
                    rs["real_server"] if rs["name"] else "",
                    rs["weight"],
                    rs["original_weight"] if rs["original_weight"] is not None else "",
                    rs["active_connections"],
                    rs["inactive_connections"],
                    rs["stats"]["connections"],
                    state,
                    real_server_health(rs["probe"]["state"]),
                ]
            )
        header = ["  REAL SERVER", "ADDRESS", "WEIGHT", "ORIGINAL", "ACTIVE", "INACTIVE", "CONNS", "STATE", "HEALTH"]
        _table(header, rows, out)
    return 0


def setup_failover(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "failover",
        run_failover,
        (("--release",), {"action": "store_true", "help": "release the manual failover request"}),
        (("--all-holders",), {"action": "store_true", "help": "with --release: also release the alerts' requests"}),
        REASON,
        target=False,
        help="ask keepalived to move this director's VIPs to the backup",
        description="Write 1 to the actuator's keepalived track file (its VRRP priority drops, the backup "
        "takes the VIPs); --release writes 0 once no alert asks for a failover either.",
    )


def run_failover(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = client_from_args(args)
    if args.release:
        reply = client.post("/api/v1/failover/release", {"all_holders": args.all_holders})
    else:
        reply = client.post("/api/v1/failover", {"reason": args.reason})
    return _outcome(reply, out)


COMMANDS = {
    "quarantine": setup_quarantine,
    "restore": setup_restore,
    "drain": setup_drain,
    "weight": setup_weight,
    "add": setup_add,
    "remove": setup_remove,
    "ledger": setup_ledger,
    "failover": setup_failover,
}
"""Every actuator command of the CLI: name -> setup function (``lvsguard/cli.py`` loops over it)."""
