"""The TOML config file, structured into frozen attrs classes."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

SLOTS = ("1x1", "0p5x1", "1x0p5", "0p5x0p5")
PULL_POLICIES = ("missing", "always", "never")
OUTPUT_FORMATS = ("gds", "oas")  # the final layout a run writes: GDS, or OASIS (smaller)


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and the key."""


@attrs.frozen
class ServerConfig:
    """The `[server]` table."""

    host: str = "127.0.0.1"
    port: int = 8000
    storage_path: Path = Path("./data")
    max_concurrent: int = 1
    upload_expiry_minutes: int = 15
    max_upload_mb: int = 2048
    # Free space the storage keeps: an upload that would leave less is refused (507), and
    # runs wait to start while there is less (their outputs must fit).
    min_free_mb: int = 1024
    trusted_proxies: tuple[str, ...] = ()
    sse_heartbeat_seconds: float = 15
    allowed_hosts: tuple[str, ...] = ()  # names besides localhost and `host`, with auth off
    max_queued_per_owner: int = 0  # runs one key may have waiting; past it 429 (0: no limit)
    max_running_per_owner: int = 0  # runs of one key running at once; past it 429 (0: no limit)
    # A request's head, a JSON body, and each such window of an upload must arrive in this.
    read_timeout_seconds: float = 30
    min_upload_kib_per_second: int = 8  # an upload slower over read_timeout_seconds: 408
    max_uploads_per_key: int = 8  # uploads of one key under way at once; past it 429 (0: none)
    max_streams_per_key: int = 16  # live streams one key holds open; past it 429 (0: no limit)
    max_waits_per_key: int = 16  # `/wait` calls one key holds open; past it 429 (0: no limit)
    max_storage_mb_per_user: int = 20480  # a user key's uploads and run outputs (0: no limit)


ENGINE_SCHEMES = ("unix://", "tcp://")
_ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LOCAL_ENGINE = "local"  # the one engine of `[docker] url` and `server.max_concurrent`


@attrs.frozen
class EngineConfig:
    """One `[[docker.engines]]` entry: a Docker engine runs start on, and how many at once.

    `memory_limit`, `pull` and `cpus` left empty (0) take `[docker]`'s; `tls_*` are PEM files,
    all three or none, and the engine's certificate is verified against `tls_ca`.
    """

    name: str
    url: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_concurrent: int = 1
    memory_limit: str = ""
    pull: str = ""
    cpus: float = 0  # CPUs each run's container may use; 0: `[docker]`'s

    @property
    def tls(self) -> bool:
        """Is the engine reached over TLS?"""
        return bool(self.tls_ca)


@attrs.frozen
class DockerConfig:
    """The `[docker]` table: which image runs the precheck and how."""

    image: str = "ghcr.io/wafer-space/gf180mcu-precheck:latest"
    container_prefix: str = "precheck-"
    url: str = ""
    memory_limit: str = "24g"
    timeout_minutes: float = 1200  # 20 h, as production: a full KLayout DRC took 10 h 25 min
    pull: str = "missing"
    pids_limit: int = 4096
    cpus: float = 0  # CPUs each run's container may use (fractions too); 0: no limit
    max_line_kib: int = 64  # an output line's bytes kept; the rest is cut, with a marker
    max_log_mib: int = 256  # a run's output kept; later lines are counted, with a marker
    max_output_files: int = 10000  # files copied out of a run folder (the output layout aside)
    max_output_mib: int = 10240  # bytes copied out of a run folder, likewise
    engines: tuple[EngineConfig, ...] = ()  # empty: one engine, `local`, at `url`
    engine_grace_seconds: float = 60  # an engine that stops answering gets this long to return
    max_attempts: int = 2  # attempts of a run that ends in a system failure, the first included
    stats_seconds: float = 15  # a running container's resource use is kept once per this


ROLES = ("user", "admin")
MAX_CPUS = 1024
# Actors the server records itself: no key may take their names (it would act as them).
RESERVED_NAMES = frozenset({"anonymous", "cli", "server", "supervisor"})


@attrs.frozen
class ApiKey:
    """One API key: `key` in clear (may be `${ENV}`) or its `key_sha256` hex digest.

    `role` is `user` (reaches only what it made) or `admin` (everything); a key without one
    is an admin, as every key was before roles.
    """

    name: str
    key: str = ""
    key_sha256: str = ""
    role: str = "admin"


@attrs.frozen
class AuthConfig:
    """The `[auth]` table."""

    required: bool = False
    allowed_ips: tuple[str, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()


@attrs.frozen
class DefaultsConfig:
    """The `[defaults]` table: values a run request may leave out."""

    slot: str = "1x1"
    output_format: str = "gds"  # `oas`: the final layout in OASIS, as production, to save disk


@attrs.frozen
class PreflightConfig:
    """The `[preflight]` table: reading uploaded layouts for the pre-flight checks."""

    enabled: bool = True  # false: layouts are not read, runs queue without pre-flight
    max_seconds: float = 60  # one reading's wall-clock time; the child is killed past it
    max_memory_mb: int = 4096  # one reading's address space (RLIMIT_AS in the child)
    max_concurrent: int = 2  # readings at once


@attrs.frozen
class CacheConfig:
    """The `[cache]` table: answering a run from an earlier identical one."""

    enabled: bool = True  # false: every run runs, however many identical ones ended before


@attrs.frozen
class SmtpConfig:
    """The `[notify.smtp]` table: the mail server emails go out through (no `host`: no email).

    `starttls` upgrades a plain connection; `tls` connects with TLS at once (port 465 style).
    `sender` is the TOML key `from`; empty: `precheck@<this host's name>`.
    """

    host: str = ""
    port: int = 25
    starttls: bool = False
    tls: bool = False
    user: str = ""
    password: str = ""  # may be `${ENV}`
    sender: str = ""
    ca_file: str = ""  # a CA to trust besides the system's (a private mail server)


@attrs.frozen
class NotifyDefault:
    """One `[[notify.defaults]]` entry: a subscription every run of key `key` gets."""

    key: str
    webhook: str = ""
    email: str = ""


@attrs.frozen
class NotifyConfig:
    """The `[notify]` table: telling people when a run ends."""

    allowed_hosts: tuple[str, ...] = ()  # webhook hosts: names, *.suffix, IPs, CIDRs; none: off
    allowed_email_domains: tuple[str, ...] = ()  # none: any domain
    webhook_secret: str = ""  # may be `${ENV}`; needed once allowed_hosts lists a host
    base_url: str = ""  # where links point; empty: http://<server.host>:<server.port>
    timeout_seconds: float = 10  # one attempt; past it the attempt failed
    retry_first_seconds: float = 30
    retry_max_seconds: float = 21600
    give_up_hours: float = 24
    max_concurrent: int = 32  # attempts under way at once
    max_response_kib: int = 16  # of a receiver's answer, read then dropped
    smtp: SmtpConfig = SmtpConfig()
    defaults: tuple[NotifyDefault, ...] = ()


@attrs.frozen
class RetentionConfig:
    """The `[retention]` table: how long a final run's files are kept (0: for ever, the
    default), and a storage budget past which the oldest final runs' files go first."""

    outputs_days: float = 0  # the output layout
    reports_days: float = 0  # the check reports (and the findings read from them)
    render_days: float = 0  # the PNG render
    run_folder_days: float = 0  # the rest of the run folder (what the debug tarball holds)
    log_days: float = 0  # the captured output lines
    max_storage_gb: float = 0  # run files and output lines together (0: no budget)
    interval_minutes: float = 60  # how often the pass runs

    @property
    def enabled(self) -> bool:
        """Is anything ever removed?"""
        return any(d > 0 for d in self.days.values()) or self.max_storage_gb > 0

    @property
    def days(self) -> dict[str, float]:
        """Days each kind of file is kept, by kind (0: for ever)."""
        return {
            "outputs": self.outputs_days,
            "reports": self.reports_days,
            "render": self.render_days,
            "run_folder": self.run_folder_days,
            "logs": self.log_days,
        }


@attrs.frozen
class RecheckConfig:
    """The `[recheck]` table: running passed uploads again when the image changes."""

    enabled: bool = False  # opt-in: a new image digest (or id) queues re-checks
    max_share: float = 0.25  # of all slots re-checks may hold at once (at least one)


@attrs.frozen
class Config:
    """The whole config file."""

    server: ServerConfig = ServerConfig()
    docker: DockerConfig = DockerConfig()
    auth: AuthConfig = AuthConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    preflight: PreflightConfig = PreflightConfig()
    notify: NotifyConfig = NotifyConfig()
    cache: CacheConfig = CacheConfig()
    retention: RetentionConfig = RetentionConfig()
    recheck: RecheckConfig = RecheckConfig()

    @property
    def engines(self) -> tuple[EngineConfig, ...]:
        """The engines runs start on, with `[docker]`'s memory limit and pull policy filled in:
        the `[[docker.engines]]` entries, or else the one engine `local` of `[docker] url` and
        `server.max_concurrent`."""
        d = self.docker
        listed = d.engines or (
            EngineConfig(LOCAL_ENGINE, d.url, max_concurrent=self.server.max_concurrent),
        )
        return tuple(
            attrs.evolve(
                e,
                memory_limit=e.memory_limit or d.memory_limit,
                pull=e.pull or d.pull,
                cpus=e.cpus or d.cpus,
            )
            for e in listed
        )

    @property
    def max_concurrent(self) -> int:
        """Containers running at once over all engines."""
        return sum(e.max_concurrent for e in self.engines)


_MEMORY = re.compile(r"(?i)(\d+)\s*([kmgt]?)b?")


def parse_memory(text: str) -> int:
    """Bytes in a Docker-style size such as `24g`, `512m` or `1073741824`."""
    m = _MEMORY.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size like 512m or 24g")
    power: int = "_kmgt".index((m[2] or "_").lower())
    number = int(m[1])
    return number << (10 * power)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(Path, lambda v, _: Path(_str(v)))
    conv.register_structure_hook(str, lambda v, _: _str(v))
    conv.register_structure_hook(int, lambda v, _: _int(v))
    conv.register_structure_hook(bool, lambda v, _: _bool(v))
    conv.register_structure_hook(float, lambda v, _: _number(v))
    # cattrs would take any iterable as a tuple: a string as its characters, a table as its keys.
    conv.register_structure_hook_func(
        lambda t: t == tuple[str, ...], lambda v, _: tuple(_str(x) for x in _array(v))
    )
    conv.register_structure_hook_func(
        lambda t: t == tuple[ApiKey, ...],
        lambda v, _: tuple(conv.structure(_array(v), list[ApiKey])),
    )
    conv.register_structure_hook_func(
        lambda t: t == tuple[EngineConfig, ...],
        lambda v, _: tuple(conv.structure(_array(v), list[EngineConfig])),
    )
    conv.register_structure_hook_func(
        lambda t: t == tuple[NotifyDefault, ...],
        lambda v, _: tuple(conv.structure(_array(v), list[NotifyDefault])),
    )
    conv.register_structure_hook(
        SmtpConfig,
        make_dict_structure_fn(
            SmtpConfig, conv, _cattrs_forbid_extra_keys=True, sender=override(rename="from")
        ),
    )
    for cls in (
        ServerConfig,
        EngineConfig,
        DockerConfig,
        ApiKey,
        AuthConfig,
        DefaultsConfig,
        PreflightConfig,
        NotifyDefault,
        NotifyConfig,
        CacheConfig,
        RetentionConfig,
        RecheckConfig,
        Config,
    ):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    return conv


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return float(v)


def _array(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError(f"expected an array, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


_converter = _make_converter()


def parse_config(
    raw: dict[str, Any], source: str = "<config>", *, expand_secrets: bool = True
) -> Config:
    """Structure a parsed TOML document into a `Config`, or raise `ConfigError`.

    With `expand_secrets=False` API keys given as `${ENV}` are left unexpanded: what only the
    server needs (to check keys) is not asked of an operator's shell that merely reads.
    """
    try:
        config = _converter.structure(raw, Config)
    except cattrs.BaseValidationError as e:
        raise ConfigError(f"{source}: {_first_problem(e)}") from None
    if expand_secrets:
        config = _expand_keys(config, source)
    _validate(config, source)
    if config.docker.engines:
        # The one-engine keys and the list would say two different things.
        if config.docker.url:
            raise ConfigError(f"{source}: docker.url: give it or [[docker.engines]], not both")
        if "max_concurrent" in (raw.get("server") or {}):
            raise ConfigError(
                f"{source}: server.max_concurrent: with [[docker.engines]], give each engine's"
                " max_concurrent instead"
            )
    return config


def load_config(path: Path, *, expand_secrets: bool = True) -> Config:
    """Read and check the config file at `path` (`expand_secrets`: see `parse_config`)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, str(path), expand_secrets=expand_secrets)


def _first_problem(e: cattrs.BaseValidationError) -> str:
    # transform_error gives "reason @ $.server.port"; turn it into "server.port: reason".
    msg = cattrs.transform_error(e, path="$")[0]
    reason, _, where = msg.rpartition(" @ ")
    key = where.removeprefix("$").lstrip(".") or "(top level)"
    if reason.startswith("extra fields found"):
        extra = reason.split("(", 1)[-1].rstrip(")")
        return f"unknown key {'.'.join(filter(None, [key if key != '(top level)' else '', extra]))}"
    if reason == "required field missing":
        return f"{key}: required key missing"
    return f"{key}: {reason}"


def _expand(text: str, key: str, source: str) -> str:
    def env(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(f"{source}: {key}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(env, text)


def _expand_keys(config: Config, source: str) -> Config:
    keys = [
        attrs.evolve(k, key=_expand(k.key, f"auth.api_keys[{i}].key", source))
        for i, k in enumerate(config.auth.api_keys)
    ]
    n = config.notify
    notify = attrs.evolve(
        n,
        webhook_secret=_expand(n.webhook_secret, "notify.webhook_secret", source),
        smtp=attrs.evolve(
            n.smtp, password=_expand(n.smtp.password, "notify.smtp.password", source)
        ),
    )
    return attrs.evolve(config, auth=attrs.evolve(config.auth, api_keys=tuple(keys)), notify=notify)


def _validate(config: Config, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {why}")

    s, d, a = config.server, config.docker, config.auth
    if not 0 <= s.port <= 65535:
        raise bad("server.port", "must be between 0 and 65535")
    if s.max_concurrent < 1:
        raise bad("server.max_concurrent", "must be at least 1")
    if s.max_queued_per_owner < 0:
        raise bad("server.max_queued_per_owner", "must be at least 0 (0: no limit)")
    if s.max_running_per_owner < 0:
        raise bad("server.max_running_per_owner", "must be at least 0 (0: no limit)")
    if s.upload_expiry_minutes < 1:
        raise bad("server.upload_expiry_minutes", "must be at least 1")
    if not 0 < s.sse_heartbeat_seconds <= 3600:
        raise bad("server.sse_heartbeat_seconds", "must be a number of seconds, 0 to 3600")
    if s.max_upload_mb < 1:
        raise bad("server.max_upload_mb", "must be at least 1")
    if s.min_free_mb < 0:
        raise bad("server.min_free_mb", "must be 0 or more")
    if not 1 <= s.read_timeout_seconds <= 3600:
        raise bad("server.read_timeout_seconds", "must be a number of seconds, 1 to 3600")
    if s.min_upload_kib_per_second < 0:
        raise bad("server.min_upload_kib_per_second", "must be at least 0 (0: no minimum)")
    for key in (
        "max_uploads_per_key",
        "max_streams_per_key",
        "max_waits_per_key",
        "max_storage_mb_per_user",
    ):
        if getattr(s, key) < 0:
            raise bad(f"server.{key}", "must be at least 0 (0: no limit)")
    for j, net in enumerate(s.trusted_proxies):
        _network(net, bad, f"server.trusted_proxies[{j}]")
    if not d.image:
        raise bad("docker.image", "must not be empty")
    try:
        if parse_memory(d.memory_limit) < 6 << 20:
            raise bad("docker.memory_limit", "must be at least 6m (Docker's minimum)")
    except ValueError as e:
        raise bad("docker.memory_limit", str(e)) from None
    if d.pids_limit < 16:
        raise bad("docker.pids_limit", "must be at least 16")
    if not 0 <= d.cpus <= MAX_CPUS:
        raise bad("docker.cpus", f"must be from 0 (no limit) to {MAX_CPUS}")
    if not 1 <= d.max_line_kib <= 1 << 20:
        raise bad("docker.max_line_kib", "must be from 1 to 1048576")
    if not 1 <= d.max_log_mib <= 1 << 30:
        raise bad("docker.max_log_mib", "must be from 1 to 1073741824")
    if d.max_output_files < 1:
        raise bad("docker.max_output_files", "must be at least 1")
    if not 1 <= d.max_output_mib <= 1 << 30:
        raise bad("docker.max_output_mib", "must be from 1 to 1073741824")
    if not 0 < d.timeout_minutes < float("inf"):
        raise bad("docker.timeout_minutes", "must be a positive number")
    if d.pull not in PULL_POLICIES:
        raise bad("docker.pull", f"must be one of {', '.join(PULL_POLICIES)}")
    if not 0 < d.engine_grace_seconds <= 86400:
        raise bad("docker.engine_grace_seconds", "must be a number of seconds, above 0 to 86400")
    if not 1 <= d.stats_seconds <= 3600:
        raise bad("docker.stats_seconds", "must be a number of seconds, from 1 to 3600")
    if not 1 <= d.max_attempts <= 10:
        raise bad("docker.max_attempts", "must be from 1 to 10")
    engine_names: set[str] = set()
    for i, entry in enumerate(d.engines):
        _engine(entry, bad, f"docker.engines[{i}]", engine_names)
    if config.defaults.slot not in SLOTS:
        raise bad("defaults.slot", f"must be one of {', '.join(SLOTS)}")
    if config.defaults.output_format not in OUTPUT_FORMATS:
        raise bad("defaults.output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    pf = config.preflight
    if not 0 < pf.max_seconds <= 86400:
        raise bad("preflight.max_seconds", "must be a number of seconds, above 0 and at most 86400")
    if not 256 <= pf.max_memory_mb <= 1 << 30:
        raise bad("preflight.max_memory_mb", "must be from 256 to 1073741824")
    if not 1 <= pf.max_concurrent <= 64:
        raise bad("preflight.max_concurrent", "must be from 1 to 64")
    if not 0 < config.recheck.max_share <= 1:
        raise bad("recheck.max_share", "must be a share of the slots, above 0 to 1")
    _notify(config.notify, bad)
    _retention(config.retention, bad)
    for j, net in enumerate(a.allowed_ips):
        _network(net, bad, f"auth.allowed_ips[{j}]")
    names = set()
    for i, k in enumerate(a.api_keys):
        where = f"auth.api_keys[{i}]"
        if not k.name:
            raise bad(f"{where}.name", "must not be empty")
        if k.name in names:
            raise bad(f"{where}.name", f"duplicate name {k.name!r}")
        if k.name in RESERVED_NAMES:
            raise bad(
                f"{where}.name",
                f"{k.name!r} is a name the server records itself"
                f" ({', '.join(sorted(RESERVED_NAMES))}): choose another",
            )
        names.add(k.name)
        if bool(k.key) == bool(k.key_sha256):
            raise bad(where, "give exactly one of key or key_sha256")
        if k.key_sha256 and not re.fullmatch(r"[0-9a-f]{64}", k.key_sha256):
            raise bad(f"{where}.key_sha256", "must be 64 lowercase hex digits")
        if k.role not in ROLES:
            raise bad(f"{where}.role", "must be user or admin")
    if a.required and not a.api_keys:
        raise bad("auth.required", "is true but no auth.api_keys are configured")
    users = [k.name for k in a.api_keys if k.role == "user"]
    if users and not a.required:
        # Without a key a request is an admin: a user key would keep no one from anything.
        raise bad(
            "auth.required",
            f"is false, so the user-role keys {', '.join(map(repr, users))} would isolate"
            " nothing (a request without a key reaches everything): set auth.required = true,"
            ' or give them role = "admin"',
        )


def _retention(r: RetentionConfig, bad: Any) -> None:
    for key in (*(f"{kind}_days" for kind in ("outputs", "reports", "render", "run_folder")),
                "log_days", "max_storage_gb"):  # fmt: skip
        if not 0 <= getattr(r, key) < float("inf"):
            raise bad(f"retention.{key}", "must be a number, at least 0 (0: keep for ever)")
    if not 1 <= r.interval_minutes <= 10080:
        raise bad("retention.interval_minutes", "must be a number of minutes, 1 to 10080")


def _engine(e: EngineConfig, bad: Any, where: str, names: set[str]) -> None:
    if not _ENGINE_NAME.fullmatch(e.name):
        raise bad(f"{where}.name", "must be 1 to 63 letters, digits, '.', '_' or '-'")
    if e.name in names:
        raise bad(f"{where}.name", f"duplicate name {e.name!r}")
    names.add(e.name)
    if not e.url.startswith(ENGINE_SCHEMES):
        raise bad(f"{where}.url", "must be unix:///path/to/socket or tcp://host:port")
    if e.url.startswith("unix://") and not e.url.removeprefix("unix://").startswith("/"):
        raise bad(f"{where}.url", "a unix socket needs an absolute path: unix:///path")
    if e.url.startswith("tcp://"):
        host, sep, port = e.url.removeprefix("tcp://").rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise bad(f"{where}.url", "must be tcp://host:port")
    files = {"tls_ca": e.tls_ca, "tls_cert": e.tls_cert, "tls_key": e.tls_key}
    if any(files.values()):
        if not all(files.values()):
            raise bad(where, "give all of tls_ca, tls_cert and tls_key, or none")
        if not e.url.startswith("tcp://"):
            raise bad(f"{where}.url", "TLS needs a tcp://host:port engine")
        for key, path in files.items():
            if not Path(path).is_file():
                raise bad(f"{where}.{key}", f"{path}: no such file")
    if not 1 <= e.max_concurrent <= 1024:
        raise bad(f"{where}.max_concurrent", "must be from 1 to 1024")
    if e.memory_limit:
        try:
            if parse_memory(e.memory_limit) < 6 << 20:
                raise bad(f"{where}.memory_limit", "must be at least 6m (Docker's minimum)")
        except ValueError as err:
            raise bad(f"{where}.memory_limit", str(err)) from None
    if not 0 <= e.cpus <= MAX_CPUS:
        raise bad(f"{where}.cpus", f"must be from 0 ([docker] cpus) to {MAX_CPUS}")
    if e.pull and e.pull not in PULL_POLICIES:
        raise bad(f"{where}.pull", f"must be one of {', '.join(PULL_POLICIES)}")


_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*")


def _notify(n: NotifyConfig, bad: Any) -> None:
    if not 0 < n.timeout_seconds <= 300:
        raise bad("notify.timeout_seconds", "must be a number of seconds, above 0 to 300")
    if not 0 < n.retry_first_seconds <= n.retry_max_seconds:
        raise bad("notify.retry_first_seconds", "must be above 0 and at most retry_max_seconds")
    if not 0 < n.give_up_hours <= 24 * 30:
        raise bad("notify.give_up_hours", "must be a number of hours, above 0 to 720")
    if not 1 <= n.max_concurrent <= 1024:
        raise bad("notify.max_concurrent", "must be from 1 to 1024")
    if not 1 <= n.max_response_kib <= 1024:
        raise bad("notify.max_response_kib", "must be from 1 to 1024")
    for j, host in enumerate(n.allowed_hosts):
        if not (_HOST_NAME.fullmatch(host) or _is_network(host)):
            raise bad(f"notify.allowed_hosts[{j}]", f"{host!r} is not a host name, IP or CIDR")
    if n.allowed_hosts and not n.webhook_secret:
        raise bad("notify.webhook_secret", "must be set once notify.allowed_hosts lists a host")
    if n.webhook_secret.startswith("whsec_"):
        try:
            base64.b64decode(n.webhook_secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise bad("notify.webhook_secret", "a whsec_ secret must be base64 after it") from None
    if not 0 < n.smtp.port <= 65535:
        raise bad("notify.smtp.port", "must be between 1 and 65535")
    if n.smtp.tls and n.smtp.starttls:
        raise bad("notify.smtp", "give tls or starttls, not both")
    if n.smtp.ca_file and not Path(n.smtp.ca_file).is_file():
        raise bad("notify.smtp.ca_file", f"{n.smtp.ca_file}: no such file")
    if n.base_url and not n.base_url.startswith(("http://", "https://")):
        raise bad("notify.base_url", "must be an http:// or https:// URL")
    for i, d in enumerate(n.defaults):
        if bool(d.webhook) == bool(d.email):
            raise bad(f"notify.defaults[{i}]", "give exactly one of webhook or email")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _network(value: str, bad: Any, key: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise bad(key, f"{value!r} is not an IP address or CIDR network") from None
