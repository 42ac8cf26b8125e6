"""``--web.config.file``: TLS, basic auth and response headers, in the Prometheus exporter-toolkit format.

One file shape for the exporter and the actuator, the one every Prometheus
exporter reads, so a fleet's web config works here unchanged where Python can
honour it::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12             # TLS10 .. TLS13 (default TLS12), also max_version
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 suites, Go's names
      prefer_server_cipher_suites: true
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt, as htpasswd -nBC 10 prints it

What Python's ``ssl`` cannot do is refused by name rather than ignored:
``client_auth_type`` ``RequestClientCert`` and ``RequireAnyClientCert`` (a
certificate asked for but not verified), ``client_allowed_sans`` and
``curve_preferences``. Every problem is a WebConfigError naming the file and
the key; the file is read once at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lvsguard.errors import WebConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
CIPHER_SUITES = {  # Go's (IANA) name -> OpenSSL's; TLS 1.3 suites are not configurable (nor are they in Go)
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
"""The response headers exporter-toolkit lets a web config set."""
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
UNSUPPORTED = {
    "client_allowed_sans": "not supported: verify client certificates with client_ca_file",
    "curve_preferences": "not supported: Python's ssl offers OpenSSL's default curves",
    "cert": "not supported: give the certificate as cert_file",
    "key": "not supported: give the key as key_file",
}
AUTH_CACHE = 1024
"""Credentials remembered as passed, so that a scrape does not pay bcrypt's cost (about 50 ms at cost 10)."""


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config: ``tls`` (None: plain HTTP), ``users`` (name -> bcrypt hash) and ``headers``."""

    path: str = ""
    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    _checked: dict[bytes, bool] = field(default_factory=dict, compare=False, repr=False)  # credentials that passed
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header passes: always without users, else valid ``Basic`` credentials."""
        if not self.users:
            return True
        credentials = basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()
        with self._lock:
            if key in self._checked:
                return True
        # an unknown user is checked against a known user's hash: a wrong name costs as long as a wrong password
        ok = _checkpw(password.encode(), hashed or next(iter(self.users.values()))) and hashed is not None
        if ok:  # only what passed is remembered: a flood of guesses never evicts the scraper's entry
            with self._lock:
                if len(self._checked) >= AUTH_CACHE:
                    self._checked.clear()
                self._checked[key] = True
        return ok


NO_WEB_CONFIG = WebConfig()


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only where a web config has users

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic ...`` header; None for anything else."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def load(path: str | os.PathLike[str] | None) -> WebConfig:
    """The web config of ``path``; with no path, plain HTTP without authentication."""
    if not path:
        return NO_WEB_CONFIG
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise WebConfigError(f"{name}: cannot read the web config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{name}: the web config is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise WebConfigError(f"{where}: not YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{name}: not YAML: {exc}") from None
    return parse(data, name)


def parse(data: Any, path: str) -> WebConfig:
    """A WebConfig from the parsed YAML of ``path`` (file names in it are relative to its directory)."""
    if data is None:
        data = {}
    section = _mapping(data, path, "")
    _known(section, TOP_KEYS, path, "")
    base = os.path.dirname(os.path.abspath(path))
    tls = _tls(_mapping(section.get("tls_server_config") or {}, path, "tls_server_config"), path, base)
    http = _mapping(section.get("http_server_config") or {}, path, "http_server_config")
    _known(http, ("headers", "http2"), path, "http_server_config")
    return WebConfig(
        path=path,
        tls=tls,
        users=_users(section.get("basic_auth_users") or {}, path),
        headers=_headers(http.get("headers") or {}, path),
    )


def _tls(section: Mapping[str, Any], path: str, base: str) -> ssl.SSLContext | None:
    where = "tls_server_config"
    for key, why in UNSUPPORTED.items():
        if section.get(key):
            raise WebConfigError(f"{path}: {where}.{key}: {why}")
    _known(section, (*TLS_KEYS, *UNSUPPORTED), path, where)
    cert, key = _text(section, "cert_file", path, where), _text(section, "key_file", path, where)
    if not cert and not key:
        if any(section.get(k) for k in TLS_KEYS):
            raise WebConfigError(f"{path}: {where}: cert_file and key_file are needed for TLS")
        return None
    if not cert or not key:
        missing = "cert_file" if not cert else "key_file"
        raise WebConfigError(f"{path}: {where}.{missing}: missing (TLS needs both cert_file and key_file)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_RENEGOTIATION  # TLS 1.2: a client may not make the server redo handshakes
    cert, key = os.path.join(base, cert), os.path.join(base, key)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"{path}: {where}.cert_file/key_file: cannot load {cert} with {key}: {_reason(exc)}"
        ) from None
    context.minimum_version = _version(section, "min_version", path, "TLS12")
    maximum = section.get("max_version")
    if maximum:
        context.maximum_version = _version(section, "max_version", path, "TLS13")
        if context.maximum_version < context.minimum_version:
            raise WebConfigError(f"{path}: {where}.max_version: {maximum} is below min_version")
    _client_auth(context, section, path, base)
    suites = section.get("cipher_suites")
    if suites:
        if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
            raise WebConfigError(f"{path}: {where}.cipher_suites: expected a list of suite names")
        unknown = sorted(s for s in suites if s not in CIPHER_SUITES)
        if unknown:
            raise WebConfigError(
                f"{path}: {where}.cipher_suites: unknown or not configurable: {', '.join(unknown)}"
                f" (TLS 1.2 suites only, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
            )
        try:
            context.set_ciphers(":".join(CIPHER_SUITES[s] for s in suites))
        except ssl.SSLError:
            raise WebConfigError(f"{path}: {where}.cipher_suites: this OpenSSL offers none of them") from None
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(f"{path}: {where}.prefer_server_cipher_suites: expected true or false")
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _client_auth(context: ssl.SSLContext, section: Mapping[str, Any], path: str, base: str) -> None:
    where = "tls_server_config"
    kind = section.get("client_auth_type") or "NoClientCert"
    if kind in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            f"{path}: {where}.client_auth_type: {kind} (a certificate asked for and not verified) is not supported;"
            " use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
        )
    if kind not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: {where}.client_auth_type: {kind!r} is not one of {', '.join(CLIENT_AUTH)}")
    ca = _text(section, "client_ca_file", path, where)
    if kind != "NoClientCert" and not ca:
        raise WebConfigError(f"{path}: {where}.client_ca_file: needed with client_auth_type {kind}")
    if ca:
        if kind == "NoClientCert":
            raise WebConfigError(
                f"{path}: {where}.client_auth_type: client_ca_file is set but NoClientCert verifies no client:"
                " set RequireAndVerifyClientCert"
            )
        ca = os.path.join(base, ca)
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{path}: {where}.client_ca_file: cannot load {ca}: {_reason(exc)}") from None
    context.verify_mode = CLIENT_AUTH[kind]


def _version(section: Mapping[str, Any], key: str, path: str, default: str) -> ssl.TLSVersion:
    value = section.get(key) or default
    if value not in TLS_VERSIONS:
        raise WebConfigError(f"{path}: tls_server_config.{key}: {value!r} is not one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[value]


def _users(value: Any, path: str) -> dict[str, bytes]:
    users = _mapping(value, path, "basic_auth_users")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        where = f"{path}: basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"{where}: a user name is non-empty text without ':'")
        if not isinstance(hashed, str) or not _is_bcrypt(hashed):
            raise WebConfigError(f"{where}: expected a bcrypt hash ($2y$10$..., as 'htpasswd -nBC 10 USER' prints)")
        out[user] = hashed.encode("ascii")
    return out


def _is_bcrypt(text: str) -> bool:
    """``$2a$``/``$2b$``/``$2y$``, a two-digit cost, 53 characters of bcrypt's base64."""
    parts = text.split("$")
    return (
        len(parts) == 4
        and parts[1] in ("2a", "2b", "2y")
        and parts[2].isdigit()
        and len(parts[2]) == 2
        and len(parts[3]) == 53
        and text.isascii()
    )


def _headers(value: Any, path: str) -> dict[str, str]:
    headers = _mapping(value, path, "http_server_config.headers")
    out: dict[str, str] = {}
    allowed = {h.lower(): h for h in HEADERS}
    for name, text in headers.items():
        where = f"{path}: http_server_config.headers.{name}"
        if not isinstance(name, str) or name.lower() not in allowed:
            raise WebConfigError(f"{where}: not one of {', '.join(HEADERS)}")
        if not isinstance(text, str) or not text or any(c in text for c in "\r\n"):
            raise WebConfigError(f"{where}: expected one line of text")
        out[allowed[name.lower()]] = text
    return out


def _mapping(value: Any, path: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise WebConfigError(f"{path}: {where or 'the file'}: expected a mapping, not {type(value).__name__}")
    return value


def _known(section: Mapping[str, Any], keys: tuple[str, ...], path: str, where: str) -> None:
    unknown = sorted(str(k) for k in section if k not in keys)
    if unknown:
        prefix = f"{where}." if where else ""
        raise WebConfigError(f"{path}: {prefix}{unknown[0]}: unknown key (known: {', '.join(keys)})")


def _text(section: Mapping[str, Any], key: str, path: str, where: str) -> str:
    value = section.get(key) or ""
    if not isinstance(value, str):
        raise WebConfigError(f"{path}: {where}.{key}: expected a file name")
    return value


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
