"""The ``lvsguard`` command line: parse arguments, call the packages, print errors plainly.

No logic lives here. Every failure that lvsguard raises on purpose is printed as
``lvsguard: <message>`` with a non-zero exit; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lvsguard import __version__, defaults, keepalived, paths
from lvsguard.errors import LvsguardError
from lvsguard.logs import LineHandler, set_levels

if TYPE_CHECKING:
    from lvsguard.config import Config
    from lvsguard.config.actuator import ActuatorSettings
    from lvsguard.config.reuse import Reuse

EXIT_ERROR = 1
EXIT_USAGE = 2

# The import names of the `director` extra's packages (pyproject.toml) and of what they pull in:
# a command that needs one of them on a bare install (the agent's) says which extra brings it.
DIRECTOR_IMPORTS = frozenset(
    {"yaml", "pyroute2", "prometheus_client", "pysnmp", "pyasn1", "flask", "werkzeug", "jinja2", "itsdangerous"}
    | {"waitress", "cryptography", "bcrypt"}
)
DIRECTOR_HINT = "pip install 'lvsguard[director]'"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args.log_level)
    try:
        return args.func(args) or 0
    except LvsguardError as exc:
        if args.debug:
            raise
        print(f"lvsguard: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        if args.debug or (exc.name or "").partition(".")[0] not in DIRECTOR_IMPORTS:
            raise
        print(
            f"lvsguard: {_command(args)} needs the director's packages (no module {exc.name!r}): {DIRECTOR_HINT}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _command(args: argparse.Namespace) -> str:
    """The command that ran, as typed ('lvsguard exporter', 'lvsguard keepalived snippet'), for messages."""
    name = getattr(args.func, "__name__", "")
    return "lvsguard " + name.removeprefix("cmd_").replace("_", " ") if name.startswith("cmd_") else "this command"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsguard",
        description="Observe and steer an LVS (IPVS) load-balancing cluster.",
        epilog="Run 'lvsguard COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"lvsguard {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LVSGUARD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info, or $LVSGUARD_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    exp = sub.add_parser(
        "exporter",
        help="export the IPVS table as Prometheus metrics",
        description="Serve the kernel's IPVS table (services, real servers, host totals, sync daemon, "
        "VIPs) as Prometheus metrics on /metrics. Reads over netlink (needs CAP_NET_ADMIN), "
        "falls back to /proc/net/ip_vs read-only.",
    )
    _add_config(exp)
    exp.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to serve on (default: config or {defaults.EXPORTER_LISTEN})"
    )
    exp.add_argument(
        "--snmp-listen",
        metavar="HOST:PORT",
        help="address of the SNMP agent (needs an 'snmp' config section; default: its listen)",
    )
    _add_netns(exp)
    _add_web_config(exp)
    exp.set_defaults(func=cmd_exporter)

    act = sub.add_parser(
        "actuator",
        help="serve the Alertmanager webhook and the admin API (the only writer of IPVS)",
        description="Quarantine, drain and restore real servers from Alertmanager webhooks and the admin API "
        "(/api/v1), with the ledger and the safety rules. The token comes from $LVSGUARD_TOKEN or --token-file.",
    )
    _add_config(act)
    act.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to serve on (default: config or {defaults.ACTUATOR_LISTEN})"
    )
    _add_netns(act)
    _add_web_config(act)
    act.add_argument("--token-file", metavar="FILE", help="bearer tokens, one 'NAME:TOKEN' per line")
    act.add_argument("--ledger", metavar="FILE", help=f"the SQLite ledger (default: config or {defaults.LEDGER_PATH})")
    act.set_defaults(func=cmd_actuator)

    st = sub.add_parser(
        "status",
        help="show the IPVS table with names and stats",
        description="Print the IPVS table like 'ipvsadm -Ln --stats', with the names from the config; "
        "with --url, the actuator's view (weights, connections, holds).",
    )
    _add_config(st)
    _add_netns(st)
    st.add_argument("--exact", action="store_true", help="print exact byte and packet counts")
    st.add_argument(
        "--source", choices=["auto", "netlink", "procfs"], default="auto", help="how to read the table (default: auto)"
    )
    st.add_argument(
        "--url",
        default=os.environ.get("LVSGUARD_URL") or None,
        help="ask the actuator at URL instead of reading the local kernel (default: $LVSGUARD_URL when set)",
    )
    st.add_argument("--token-file", help="file with the bearer token for --url (default: $LVSGUARD_TOKEN)")
    st.add_argument("--token-name", help="which token of --token-file to use")
    st.add_argument("--json", action="store_true", help="with --url: print the API's JSON")
    st.add_argument(
        "--cluster",
        action="store_true",
        help="with --url: every director of the cluster (cluster.store: etcd), its role, VIPs and whether its "
        "kernel has converged, and where each cluster hold is applied; exit 2 when a director has not converged",
    )
    st.set_defaults(func=cmd_status)

    ag = sub.add_parser(
        "agent",
        help="answer the director's agent checks on a real server",
        description="Answer HAProxy agent-check connections (the director's 'agent' probe) with this real "
        "server's state: 'maint' while --maint-file exists, 'drain' while --drain-file exists, otherwise "
        "'up NN%' from the load (load average, CPU idle, or a command's output).",
    )
    ag.add_argument(
        "--listen",
        default=defaults.AGENT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to answer on (default: {defaults.AGENT_LISTEN})",
    )
    ag.add_argument(
        "--load",
        choices=["loadavg", "cpu", "command"],
        default="loadavg",
        help="where the weight percentage comes from (default: loadavg)",
    )
    ag.add_argument(
        "--command",
        metavar="CMD",
        help="with --load command: a command whose first output line is a percentage or a whole reply",
    )
    ag.add_argument("--maint-file", metavar="FILE", default="", help="answer 'maint' while this file exists")
    ag.add_argument("--drain-file", metavar="FILE", default="", help="answer 'drain' while this file exists")
    ag.add_argument("--drain", dest="drain", action="store_const", const=True, help="create --drain-file and exit")
    ag.add_argument("--undrain", dest="drain", action="store_const", const=False, help="remove --drain-file and exit")
    ag.set_defaults(func=cmd_agent)

    from lvsguard.actuator import client

    for setup in client.COMMANDS.values():
        setup(sub)
    from lvsguard.actuator import tableapply

    tableapply.setup_apply(sub)

    cfg = sub.add_parser("config", help="work with config files", description="Work with lvsguard config files.")
    cfg_sub = cfg.add_subparsers(title="config commands", metavar="COMMAND")
    chk = cfg_sub.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config file without starting anything; print every problem with its file, line and key.",
    )
    chk.add_argument("file", type=Path, help="the YAML config file")
    chk.set_defaults(func=cmd_config_check)
    cfg.set_defaults(func=lambda _args: _print_help(cfg))

    doc = sub.add_parser(
        "doctor",
        help="check this director's setup, each failure with its fix",
        description="Check what lvsguard needs on this director: the config, ip_vs, capabilities, netlink, "
        "listen addresses, keepalived's FIFO and state, the sync daemon against the VRRP role, the peer's actuator, "
        "the token and ledger files. One line per check; exit status 1 when any failed.",
    )
    _add_config(doc)
    _add_netns(doc)
    doc.add_argument("--token-file", metavar="FILE", help="the actuator's token file (default: /etc/lvsguard/tokens)")
    doc.add_argument(
        "--ledger", metavar="FILE", help="the actuator's ledger (default: config or /var/lib/lvsguard/actuator.db)"
    )
    doc.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="the servers' web config, for the listen checks over HTTPS (default: each running server's own)",
    )
    doc.set_defaults(func=cmd_doctor)

    kad = sub.add_parser(
        "keepalived",
        help="keepalived's side of a director",
        description="The keepalived lines that go with an lvsguard config (docs/ha.md).",
    )
    kad_sub = kad.add_subparsers(title="keepalived commands", metavar="COMMAND")
    snip = kad_sub.add_parser(
        "snippet",
        help="print the keepalived.conf lines that match the config",
        description="Print global_defs lines (lvs_sync_daemon, the exporter's vrrp_notify_fifo), the failover "
        "track_file and a vrrp_instance with the config's VIPs; keepalived --config-test accepts the output.",
    )
    _add_config(snip)
    snip.add_argument("--instance", default="VI_1", help="the VRRP instance's name (default: VI_1)")
    snip.add_argument("--interface", default="eth0", help="VRRP adverts and VIPs on this interface (default: eth0)")
    snip.add_argument("--sync-interface", default="", help="the sync daemon's interface (default: --interface)")
    snip.add_argument(
        "--virtual-router-id",
        type=int,
        choices=range(1, 256),
        metavar="1..255",
        default=51,
        help="VRRP router id, also the sync daemon's id (default: 51)",
    )
    snip.add_argument(
        "--priority",
        type=int,
        choices=range(1, 255),
        metavar="1..254",
        default=100,
        help="this director's VRRP priority; give the other director another (default: 100)",
    )
    snip.add_argument(
        "--vip",
        action="append",
        default=[],
        metavar="ADDRESS[/PREFIX]",
        help="another address to move with the director (repeatable): a gateway, a service not in the config",
    )
    snip.add_argument(
        "--role-fifo",
        default=keepalived.ROLE_FIFO,
        metavar="FIFO",
        help=f"with actuator.role_file: keepalived's notify_fifo for the follower (default: {keepalived.ROLE_FIFO})",
    )
    snip.add_argument(
        "--lvsguard",
        default=keepalived.LVSGUARD,
        metavar="COMMAND",
        help=f"the lvsguard command keepalived runs as notify_fifo_script (default: {keepalived.LVSGUARD})",
    )
    snip.set_defaults(func=cmd_keepalived_snippet)
    fol = kad_sub.add_parser(
        "follow",
        help="copy keepalived's VRRP state to the actuator's role_file",
        description="Read keepalived's notify FIFO and write each state of the instance (MASTER, BACKUP, FAULT, "
        "STOP) to the role file, in order; keepalived runs it as notify_fifo_script and passes the FIFO last.",
    )
    fol.add_argument("--role-file", required=True, metavar="FILE", help="the actuator's role_file")
    fol.add_argument("--instance", default="", help="only this VRRP instance (default: every instance)")
    fol.add_argument("fifo", metavar="FIFO", help="keepalived's notify FIFO")
    fol.set_defaults(func=cmd_keepalived_follow)
    kad.set_defaults(func=lambda _args: _print_help(kad))

    pth = sub.add_parser(
        "paths",
        help="print where the shipped units, examples, rules, dashboards and MIB are",
        description="Print the folders of the files that ship with lvsguard: systemd units, sysusers, example "
        "configs, alert rules with Alertmanager's example, Grafana dashboards, the MIB. With NAME, only that "
        'folder\'s path (for scripts: cp "$(lvsguard paths systemd)"/*.service /etc/systemd/system/).',
    )
    pth.add_argument("name", nargs="?", choices=[*paths.SHARE, "mib"], metavar="NAME", help="one folder: %(choices)s")
    pth.set_defaults(func=cmd_paths)

    imp = sub.add_parser(
        "import",
        help="print an lvsguard config for a keepalived, ldirectord or ipvsadm-save file",
        description="Translate keepalived.conf (virtual_server blocks), ldirectord.cf or an 'ipvsadm-save -n' dump "
        "into an lvsguard config with table management on, printed on stdout. What does not translate becomes "
        "a comment (and a line on stderr); --strict then exits 3.",
    )
    imp.add_argument("format", choices=["keepalived", "ldirectord", "ipvsadm"], help="the file's format")
    imp.add_argument("file", nargs="?", default="-", help="the file to read ('-' or none: stdin)")
    imp.add_argument("--strict", action="store_true", help="exit 3 when any setting was not translated")
    imp.set_defaults(func=cmd_import)

    dif = sub.add_parser(
        "diff",
        help="show what it takes to make the IPVS table match the config (read-only)",
        description="Print the plan from the kernel's IPVS table to the config's (table.manage: true), "
        "like 'terraform plan'. Exit 0 when they match, 2 when changes are pending, 1 on error.",
    )
    dif.add_argument("--config", "-c", required=True, metavar="FILE", help="the YAML config")
    dif.add_argument(
        "--ledger", metavar="FILE", help="the actuator's ledger, read-only (default: the config's, when it is there)"
    )
    dif.add_argument(
        "--cluster",
        action="store_true",
        help="the plan from the cluster's desired table in etcd to the config's (what 'apply --cluster' writes)",
    )
    _add_netns(dif)
    dif.set_defaults(func=cmd_diff)

    return parser


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, metavar="FILE", help="YAML config (names, exporter options); optional")


def _add_web_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="TLS, basic auth and headers in the Prometheus exporter-toolkit format (docs/install.md)",
    )


def _add_netns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME", help="read the IPVS table of this network namespace (as 'ip netns')")


def _print_help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return EXIT_USAGE


def configure_logging(level: str) -> None:
    """Structured, one line per event: ``time level logger message key=value ...``."""
    handler = LineHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    set_levels(os.environ.get("LVSGUARD_LOG_LEVELS", ""))  # one module's level: docs/install.md, "Logs"


def _load_config(path: Path | None, reuse: Reuse | None = None) -> Config:
    from lvsguard import config

    return config.load(path, reuse=reuse) if path else config.Config()


def cmd_exporter(args: argparse.Namespace) -> int:
    from lvsguard import webconfig
    from lvsguard.exporter import main as exporter_main

    cfg = _load_config(args.config)
    web = webconfig.load(args.web_config)  # read once, before anything starts
    listen = args.listen or cfg.exporter.listen
    netns = args.netns or cfg.director.netns
    exporter_main.serve(cfg, listen=listen, netns=netns, snmp_listen=args.snmp_listen, web=web)
    return 0


def cmd_actuator(args: argparse.Namespace) -> int:
    from lvsguard import webconfig
    from lvsguard.actuator import app
    from lvsguard.config.reuse import Reuse

    reuse = Reuse()  # a reload parses again only the services whose text changed
    cfg = _load_config(args.config, reuse)
    settings = _actuator_settings(args, reuse)
    app.serve(
        settings,
        web=webconfig.load(args.web_config),  # read before anything starts: a bad file is one line, no traceback
        listen=args.listen or settings.listen,  # actuator.listen, else defaults.ACTUATOR_LISTEN
        netns=args.netns or cfg.director.netns,
        ledger_path=args.ledger,
        reload=lambda: _actuator_settings(args, reuse),  # SIGHUP: the config and the tokens again
        reload_web=(lambda: webconfig.load(args.web_config)) if args.web_config else None,  # and the web config
    )
    return 0


def _actuator_settings(args: argparse.Namespace, reuse: Reuse | None = None) -> ActuatorSettings:
    """The actuator's settings from the config and the tokens (LVSGUARD_TOKEN, --token-file)."""
    import dataclasses

    from lvsguard.actuator import auth, settings

    cfg = _load_config(args.config, reuse)
    actuator_settings = cfg.actuator or settings.from_mapping(None)
    tokens = auth.load_tokens(os.environ, args.token_file)  # TokenFileError is an LvsguardError
    return dataclasses.replace(
        actuator_settings, tokens=tokens, table=cfg.table, desired=cfg.desired, cluster=cfg.cluster
    )


def cmd_status(args: argparse.Namespace) -> int:
    from lvsguard import status

    if args.cluster and not args.url:
        raise LvsguardError("status --cluster asks an actuator: give --url (or set LVSGUARD_URL)")
    if args.url:
        from lvsguard.actuator.client import cluster_from_api, status_from_api

        return cluster_from_api(args) if args.cluster else status_from_api(args)
    cfg = _load_config(args.config)
    netns = args.netns or cfg.director.netns
    print(status.render(status.read_table(netns=netns, source=args.source), cfg, exact=args.exact), end="")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import shlex

    from lvsguard import agent

    options = agent.AgentOptions(args.load, tuple(shlex.split(args.command or "")), args.maint_file, args.drain_file)
    return agent.run(args.listen, options, drain=args.drain)


def cmd_config_check(args: argparse.Namespace) -> int:
    from lvsguard import config

    cfg = config.load(args.file)
    print(f"{args.file}: ok ({len(cfg.services)} services)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    if args.cluster:
        from lvsguard import config
        from lvsguard.cluster import commands as cluster

        return cluster.diff(config.load(args.config))
    from lvsguard.table import commands

    return commands.diff(args.config, args.netns, ledger=args.ledger)


def cmd_import(args: argparse.Namespace) -> int:
    from lvsguard.table import importers

    return importers.run(args.format, args.file, strict=args.strict)


def cmd_doctor(args: argparse.Namespace) -> int:
    from lvsguard import doctor

    checks = doctor.Doctor(
        config_path=str(args.config) if args.config else None,
        netns=args.netns,
        token_file=args.token_file,
        ledger=args.ledger,
        web_config=args.web_config,
    )
    results = checks.run()
    print(doctor.render(results), end="")
    return doctor.exit_status(results)


def cmd_paths(args: argparse.Namespace) -> int:
    if args.name:
        print(paths.share(args.name))
        return 0
    for name, folder in paths.all_paths().items():
        print(f"{name:<11} {folder}")
    return 0


def cmd_keepalived_follow(args: argparse.Namespace) -> int:
    keepalived.follow(args.fifo, args.role_file, args.instance)
    return 0


def cmd_keepalived_snippet(args: argparse.Namespace) -> int:
    options = keepalived.SnippetOptions(
        args.instance,
        args.interface,
        args.sync_interface,
        args.virtual_router_id,
        args.priority,
        tuple(args.vip),
        args.role_fifo,
        args.lvsguard,
    )
    print(keepalived.snippet(_load_config(args.config), options), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
