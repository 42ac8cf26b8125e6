"""``lvsguard doctor``: is this director set up for lvsguard? One line per check, each failure with its fix.

The checks, in order (a later one may use what an earlier one found):

- ``config``: the config file loads (the rest run on the defaults when it does not);
- ``ip_vs``: the kernel module is loaded;
- ``capabilities``: this process, and every running ``lvsguard exporter`` or
  ``lvsguard actuator``, has CAP_NET_ADMIN (without it the exporter falls back
  to /proc/net/ip_vs and the actuator cannot write);
- ``netlink read`` and ``netlink write``: the IPVS table answers over generic
  netlink; the write check sends a request the kernel refuses for its content,
  after its permission check, so it changes nothing;
- ``exporter listen`` and ``actuator listen``: the address (the running
  server's ``--listen``, else the config's, else the default) is not loopback
  only (Prometheus and Alertmanager run elsewhere) and it answers HTTP there,
  or HTTPS where the server's web config (its ``--web.config.file``, else the
  doctor's) has ``tls_server_config``: a plain port where TLS is expected, or
  the reverse, is a failure (the certificate is not verified: this checks
  reachability, not trust; a server that requires client certificates passes
  when it refuses the doctor's handshake for want of one);
- ``keepalived fifo``: ``director.keepalived_fifo`` is a FIFO;
- ``vrrp state``: ``actuator.role_file`` names a VRRP state (an unknown role
  makes the peer refuse every failover towards this director);
- ``sync daemon``: the IPVS sync daemon runs in the role VRRP gives this
  director (master on the MASTER, backup on the BACKUP);
- ``peer``: the other director's actuator (``actuator.failover_peer_url``)
  answers and knows its role;
- ``tokens``: the token file is private (as the actuator requires);
- ``ledger``: the ledger's directory exists and the ledger is not open to others;
- ``cluster store``: with ``cluster.store: etcd``, every endpoint answers
  (with the configured TLS files) and etcd has a leader (docs/cluster.md).

A check that does not apply (nothing configured for it) is skipped, not
failed. The exit status is 1 when any check failed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvsguard import defaults
from lvsguard.errors import LvsguardError, NotPermitted
from lvsguard.keepalived import ROLES, read_role_file
from lvsguard.secretfile import exposure

if TYPE_CHECKING:
    from lvsguard.config import Config
    from lvsguard.webconfig import WebConfig

CAP_NET_ADMIN = 12
DEFAULT_CONFIG = defaults.CONFIG_PATH
DEFAULT_TOKENS = "/etc/lvsguard/tokens"
DEFAULT_LEDGER = defaults.LEDGER_PATH
DEFAULT_ACTUATOR_LISTEN = defaults.ACTUATOR_LISTEN
CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Result:
    """One check's outcome: ``status`` is ok, fail or skip; ``fix`` is one line, for a failure."""

    name: str
    status: str
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Result:
    return Result(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, "fail", detail, fix)


def skip(name: str, detail: str) -> Result:
    return Result(name, "skip", detail)


@dataclass
class Doctor:
    """What the checks look at; ``proc`` and ``sys_module`` are the kernel's views (/proc, /sys/module)."""

    config_path: str | None = None
    netns: str | None = None
    token_file: str | None = None
    ledger: str | None = None
    web_config: str | None = None
    proc: Path = Path("/proc")
    sys_module: Path = Path("/sys/module")
    cfg: Config | None = None
    role: str = "unknown"
    _kernel: Any = field(default=None, repr=False)

    def run(self) -> list[Result]:
        checks: list[Callable[[], Result | list[Result]]] = [
            self.check_config,
            self.check_ip_vs,
            self.check_capabilities,
            self.check_netlink_read,
            self.check_netlink_write,
            self.check_exporter_listen,
            self.check_actuator_listen,
            self.check_keepalived_fifo,
            self.check_vrrp_state,
            self.check_sync_daemon,
            self.check_peer,
            self.check_tokens,
            self.check_ledger,
            self.check_cluster_store,
        ]
        results: list[Result] = []
        try:
            for check in checks:
                try:
                    found = check()
                except OSError as exc:  # a file the doctor may not read: said, not a traceback
                    name = check.__name__.removeprefix("check_").replace("_", " ")
                    found = fail(name, f"{exc.filename or ''}: {exc.strerror or exc}", "run lvsguard doctor as root")
                results.extend(found if isinstance(found, list) else [found])
        finally:
            if self._kernel is not None:
                self._kernel.close()
        return results

    # -- the config ----------------------------------------------------------------------

    def check_config(self) -> Result:
        from lvsguard import config

        path = self.config_path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
        if path is None:
            self.cfg = config.Config()
            return skip("config", f"no --config and no {DEFAULT_CONFIG}: the defaults")
        try:
            self.cfg = config.load(Path(path))
        except LvsguardError as exc:
            self.cfg = config.Config()
            first = str(exc).splitlines()[0]
            return fail("config", first, f"lvsguard config check {path} lists every problem with its line")
        if self.netns is None:
            self.netns = self.cfg.director.netns
        return ok("config", f"{path}: {len(self.cfg.services)} services")

    @property
    def config(self) -> Config:
        assert self.cfg is not None, "check_config runs first"
        return self.cfg

    # -- the kernel ----------------------------------------------------------------------

    def check_ip_vs(self) -> Result:
        """Before any netlink request: the kernel autoloads ip_vs for its genetlink family, not at boot."""
        if (self.sys_module / "ip_vs").is_dir():
            return ok("ip_vs", "the ip_vs module is loaded")
        return fail(
            "ip_vs",
            "the ip_vs module is not loaded",
            "modprobe ip_vs, and echo ip_vs > /etc/modules-load.d/ipvs.conf to load it at boot",
        )

    def check_capabilities(self) -> list[Result]:
        results = []
        if has_net_admin(self.proc / "self" / "status"):
            results.append(ok("capabilities", "this process has CAP_NET_ADMIN"))
        else:
            results.append(
                fail("capabilities", "this process has no CAP_NET_ADMIN", "run lvsguard doctor as root (sudo)")
            )
        for pid, command, _argv in lvsguard_processes(self.proc):
            if has_net_admin(self.proc / str(pid) / "status"):
                results.append(ok("capabilities", f"lvsguard {command} (pid {pid}) has CAP_NET_ADMIN"))
            else:
                results.append(
                    fail(
                        "capabilities",
                        f"lvsguard {command} (pid {pid}) has no CAP_NET_ADMIN: "
                        + ("it reads /proc/net/ip_vs only" if command == "exporter" else "it cannot write IPVS"),
                        "give its unit AmbientCapabilities=CAP_NET_ADMIN (packaging/systemd has it) and restart it",
                    )
                )
        return results

    def _netlink(self) -> Any:
        """The NetlinkIPVS of the director's namespace, opened once; raises KernelError."""
        if self._kernel is None:
            from lvsguard.ipvs.netlink import NetlinkIPVS

            self._kernel = NetlinkIPVS(self.netns)
        return self._kernel

    def check_netlink_read(self) -> Result:
        where = f" (netns {self.netns})" if self.netns else ""
        try:
            table = self._netlink().read()
        except NotPermitted as exc:
            return fail("netlink read", str(exc), "needs CAP_NET_ADMIN: run as root or in the unit")
        except LvsguardError as exc:
            return fail("netlink read", str(exc), "modprobe ip_vs; with director.netns, check the namespace exists")
        return ok("netlink read", f"{len(table.services)} services{where}")

    def check_netlink_write(self) -> Result:
        try:
            self._netlink().check_write()
        except NotPermitted as exc:
            return fail("netlink write", str(exc), "needs CAP_NET_ADMIN: run as root or in the unit")
        except LvsguardError as exc:
            return fail("netlink write", str(exc), "modprobe ip_vs; with director.netns, check the namespace exists")
        return ok("netlink write", "the kernel accepts IPVS writes from this process")

    # -- listen addresses ----------------------------------------------------------------

    def check_exporter_listen(self) -> Result:
        listen = self._running_arg("exporter", "--listen") or self.config.exporter.listen
        return self._listen("exporter listen", listen, "exporter.listen", "lvsguard-exporter")

    def check_actuator_listen(self) -> Result:
        configured = self.config.actuator.listen if self.config.actuator else DEFAULT_ACTUATOR_LISTEN
        listen = self._running_arg("actuator", "--listen") or configured
        return self._listen("actuator listen", listen, "actuator.listen", "lvsguard-actuator")

    def _running_arg(self, command: str, flag: str) -> str:
        """The value of ``flag`` of the running lvsguard ``command`` (it wins over the config), or ""."""
        for _pid, found, argv in lvsguard_processes(self.proc):
            if found == command and flag in argv[:-1]:
                return argv[argv.index(flag) + 1]
        return ""

    def _listen(self, name: str, listen: str, key: str, unit: str) -> Result:
        try:
            host, port = split_listen(listen)
        except ValueError as exc:
            return fail(name, str(exc), f"set {key} to HOST:PORT")
        if host and ipaddress.ip_address(host).is_loopback:
            return fail(
                name,
                f"{listen} is loopback only: Prometheus and Alertmanager on other hosts cannot reach it",
                f"set {key} to this director's address (or 0.0.0.0:{port}) and protect it with a token",
            )
        target = host or outside_address()
        if target is None:
            return fail(name, "this host has no address besides loopback", "give the director a network address")
        from lvsguard import webconfig
        from lvsguard.errors import WebConfigError

        command = unit.removeprefix("lvsguard-")
        path = self._running_arg(command, "--web.config.file") or self.web_config
        try:
            web = webconfig.load(path)
        except WebConfigError as exc:
            return fail(name, str(exc), f"fix the web config the {command} runs with, or pass the right one")
        return self.reach(name, listen, (target, port), web, unit)

    def reach(self, name: str, listen: str, address: tuple[str, int], web: WebConfig, unit: str) -> Result:
        """Whether ``address`` answers HTTP, or HTTPS when ``web`` has TLS: ok, or a failure with its fix."""
        where = format_address(*address)
        tls = web.tls is not None
        try:
            status = http_status_line(address, tls=tls)
        except ssl.SSLError as exc:
            if web.tls is not None and web.tls.verify_mode == ssl.CERT_REQUIRED:
                return ok(name, f"{listen}: answers https on {where}, and requires a client certificate")
            return fail(
                name,
                f"no TLS on {where} ({exc.reason or exc}): the server speaks plain HTTP",
                f"start {unit} with the --web.config.file that has tls_server_config, or give the doctor the one "
                "it runs with",
            )
        except OSError as exc:
            return fail(
                name,
                f"nothing answers on {where}: {exc.strerror or exc}",
                f"systemctl start {unit} (and check its log: journalctl -u {unit})",
            )
        except ValueError:
            return fail(
                name,
                f"{where} does not answer plain HTTP: it may speak TLS",
                "give the doctor the server's web config: lvsguard doctor --web.config.file FILE",
            )
        return ok(name, f"{listen}: answers {'https' if tls else 'http'} on {where} ({status})")

    # -- keepalived ----------------------------------------------------------------------

    def check_keepalived_fifo(self) -> Result:
        fifo = self.config.director.keepalived_fifo
        if not fifo:
            return skip("keepalived fifo", "director.keepalived_fifo is not set: no VRRP state series")
        fix = "set vrrp_notify_fifo to it in keepalived.conf (lvsguard keepalived snippet) and restart keepalived"
        try:
            st = os.stat(fifo)
        except OSError as exc:
            return fail("keepalived fifo", f"{fifo}: {exc.strerror}", fix)
        if not stat.S_ISFIFO(st.st_mode):
            return fail("keepalived fifo", f"{fifo} is not a FIFO", f"rm {fifo}; " + fix)
        return ok("keepalived fifo", f"{fifo} is a FIFO")

    def check_vrrp_state(self) -> Result:
        role_file = self.config.actuator.role_file if self.config.actuator else ""
        if not role_file:
            return skip("vrrp state", "actuator.role_file is not set: the peer cannot check this director's role")
        self.role = read_role_file(role_file)
        if self.role == "unknown":
            return fail(
                "vrrp state",
                f"{role_file} names no VRRP state: the other director refuses every failover towards this one",
                "let keepalived run lvsguard keepalived follow as notify_fifo_script (lvsguard keepalived snippet)",
            )
        return ok("vrrp state", f"{self.role} ({role_file})")

    def check_sync_daemon(self) -> Result:
        if self.role not in ("master", "backup"):
            return skip("sync daemon", f"the VRRP role is {self.role}: no sync daemon role to compare")
        try:
            daemons = self._netlink().sync_daemons()
        except LvsguardError as exc:
            return fail("sync daemon", str(exc), "fix netlink read first")
        roles = sorted(d.role for d in daemons)
        if self.role not in roles:
            return fail(
                "sync daemon",
                f"VRRP says {self.role}, sync daemons running: {', '.join(roles) or 'none'}",
                "let keepalived run it: lvs_sync_daemon IFACE INSTANCE in global_defs (lvsguard keepalived snippet)",
            )
        return ok("sync daemon", f"{self.role}, as VRRP says")

    def check_peer(self) -> Result:
        url = self.config.actuator.failover_peer_url if self.config.actuator else ""
        if not url:
            return skip("peer", "actuator.failover_peer_url is not set: failovers are not checked with the peer")
        try:
            reply = peer_director(url, self._token())
        except (OSError, ValueError) as exc:
            return fail(
                "peer",
                f"{url}: {getattr(exc, 'reason', None) or exc}",
                "start the other director's actuator and let this host reach it (listen address, firewall, token)",
            )
        role = reply.get("role", "unknown")
        if role not in ROLES:
            return fail(
                "peer",
                f"{url} answers with role {role}: every failover from this director is refused",
                "set actuator.role_file on the other director and have keepalived's state copied to it",
            )
        if role == self.role == "master":
            return fail("peer", f"{url} says master, as this director does", "two masters: check VRRP between them")
        return ok("peer", f"{url}: {role}")

    def _token(self) -> str | None:
        token = os.environ.get("LVSGUARD_TOKEN", "").strip()
        if token:
            return token
        path = self.token_file or DEFAULT_TOKENS
        try:
            with open(path, encoding="utf-8") as fh:
                line = next((line.strip() for line in fh if line.strip() and not line.startswith("#")), "")
        except OSError:
            return None
        return line.split(":", 1)[-1] or None

    # -- files ---------------------------------------------------------------------------

    def check_tokens(self) -> Result:
        path = self.token_file or DEFAULT_TOKENS
        try:
            st = os.stat(path)
        except PermissionError as exc:
            return fail("tokens", f"{path}: {exc.strerror}", "run lvsguard doctor as root")
        except OSError as exc:
            if self.token_file is None and not self.config.actuator:
                return skip("tokens", f"no {DEFAULT_TOKENS} and no actuator section")
            return fail(
                "tokens", f"{path}: {exc.strerror}", f"write NAME:SECRET lines to {path} (docs/install.md), mode 640"
            )
        problem = exposure(path, st)
        if problem is not None:
            return fail(
                "tokens", problem.split(": make it private")[0], f"chmod 640 {path}; chown root:lvsguard {path}"
            )
        return ok("tokens", f"{path} is private (mode {stat.S_IMODE(st.st_mode):04o})")

    def check_ledger(self) -> Result:
        default = self.config.actuator.ledger_path if self.config.actuator else DEFAULT_LEDGER
        path = Path(self.ledger or default)
        if not path.parent.is_dir():
            if self.ledger is None and not self.config.actuator:
                return skip("ledger", f"no {path.parent} and no actuator section")
            return fail(
                "ledger",
                f"directory {path.parent} does not exist: the actuator does not start",
                f"install -d -o lvsguard -g lvsguard -m 0750 {path.parent} (the unit's StateDirectory= does it)",
            )
        for file in (path.parent, path):
            try:
                mode = stat.S_IMODE(os.stat(file).st_mode)
            except FileNotFoundError:
                continue
            except OSError as exc:
                return fail("ledger", f"{file}: {exc.strerror}", "run lvsguard doctor as root")
            if mode & 0o006:
                return fail(
                    "ledger",
                    f"{file} is open to others (mode {mode:04o}): holds, jobs and the audit",
                    f"chmod o-rwx {file}",
                )
        return ok("ledger", f"{path}: not open to others")

    def check_cluster_store(self) -> Result:
        """Each etcd endpoint on its own: one that does not answer is a failover the actuator will make."""
        from lvsguard.cluster.etcd import EtcdClient

        cluster = self.config.cluster
        if not cluster.shared:
            return skip("cluster store", f"cluster.store: {cluster.store}: holds stay in this director's ledger")
        problems, leaders = [], set()
        for endpoint in cluster.endpoints:
            try:
                client = EtcdClient(
                    [endpoint],
                    ca_file=cluster.ca_file,
                    cert_file=cluster.cert_file,
                    key_file=cluster.key_file,
                    timeout=3.0,
                )
                leaders.add(str(client.status().get("leader", "")))
                client.close()
            except LvsguardError as exc:
                problems.append(str(exc))
        if problems:
            return fail(
                "cluster store",
                f"{len(problems)} of {len(cluster.endpoints)} etcd endpoints: " + "; ".join(problems),
                "start the etcd member, let this host reach it (firewall, https and the TLS files in cluster.*)",
            )
        if len(leaders) != 1 or "" in leaders or "0" in leaders:
            return fail(
                "cluster store",
                f"the etcd members do not agree on a leader ({', '.join(sorted(leaders))})",
                "etcdctl endpoint status --cluster: a member partitioned or a cluster without quorum",
            )
        return ok("cluster store", f"{len(cluster.endpoints)} etcd endpoints answer, one leader")


# -- helpers ---------------------------------------------------------------------------------


def has_net_admin(status: Path) -> bool:
    """Whether the process of ``/proc/PID/status`` has CAP_NET_ADMIN in its effective set."""
    try:
        text = status.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def lvsguard_processes(proc: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``(pid, "exporter" | "actuator", argv)`` of every running lvsguard server but this process."""
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        command = lvsguard_command(argv)
        if command:
            yield int(entry.name), command, argv


def lvsguard_command(argv: list[str]) -> str:
    """``exporter`` or ``actuator`` when ``argv`` runs that lvsguard command, else ""."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "lvsguard" or arg == "lvsguard.cli":
            return next((a for a in argv[i + 1 :] if a in ("exporter", "actuator")), "")
    return ""


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` -> (host or "" for every address, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{listen!r}: expected HOST:PORT")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = ""
    if host == "localhost":
        host = "127.0.0.1"
    if host:
        ipaddress.ip_address(host)  # ValueError for a name: the servers bind addresses
    return host, int(port)


def outside_address() -> str | None:
    """An address of this host that other hosts can reach (not loopback, not link-local), or None."""
    from lvsguard.ipvs.addresses import local_addresses

    for address in local_addresses():
        parsed = ipaddress.ip_address(address)
        if not (parsed.is_loopback or parsed.is_link_local):
            return address
    return None


def http_status_line(address: tuple[str, int], *, tls: bool) -> str:
    """The status of ``GET /`` at ``address`` ("200 OK"), over TLS when ``tls`` (the certificate is not verified).

    OSError when nothing accepts the connection; once connected, ssl.SSLError when
    the TLS exchange fails, ValueError when a plain exchange gets no HTTP answer.
    """
    with socket.create_connection(address, timeout=CONNECT_TIMEOUT) as raw:
        try:
            conn: socket.socket = raw
            if tls:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # reachability, not trust
                conn = context.wrap_socket(raw, server_hostname=address[0])
            conn.sendall(f"GET / HTTP/1.0\r\nHost: {format_address(*address)}\r\n\r\n".encode())
            first = conn.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
        except ssl.SSLError:
            raise
        except OSError as exc:  # reset or timed out once connected
            if tls:
                raise ssl.SSLError(f"the TLS connection failed: {exc.strerror or exc}") from None
            raise ValueError(f"no HTTP answer: {exc.strerror or exc}") from None
    if not first.startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {first[:40]!r}")
    return first.split(" ", 1)[1] if " " in first else first


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_director(url: str, token: str | None) -> dict[str, Any]:
    """The other actuator's ``GET /api/v1/director``; OSError when it does not answer, ValueError for garbage."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/director", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"HTTP {exc.code}") from None
    if not isinstance(body, dict):
        raise ValueError("the reply is not a JSON object")
    return body


def render(results: list[Result]) -> str:
    """One line per check, ``fix:`` under each failure."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.status.upper():4}  {r.name:{width}}  {r.detail}")
        if r.fix:
            lines.append(f"      {'':{width}}  fix: {r.fix}")
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "fail", "skip")}
    lines.append(f"{counts['fail']} failed, {counts['ok']} ok, {counts['skip']} skipped")
    return "\n".join(lines) + "\n"


def exit_status(results: list[Result]) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0
