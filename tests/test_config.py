"""`load_config` on real TOML files, and the server refusing to start on a bad one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from precheck.config import ConfigError, load_config

FULL = """
[server]
host = "0.0.0.0"
port = 9123
storage_path = "/srv/precheck"
max_concurrent = 3
upload_expiry_minutes = 30
max_upload_mb = 512
trusted_proxies = ["10.0.0.1", "fd00::/8"]

[docker]
image = "example.org/precheck:1.2"
container_prefix = "pc-"
url = "tcp://docker.internal:2375"
memory_limit = "8g"
timeout_minutes = 60
pull = "never"
pids_limit = 1024

[auth]
required = true
allowed_ips = ["192.168.1.0/24", "10.0.0.5"]

[[auth.api_keys]]
name = "ci-server"
key = "ws_key_abc123"

[[auth.api_keys]]
name = "developer"
key_sha256 = "{digest}"

[defaults]
slot = "0p5x1"

[preflight]
enabled = false
max_seconds = 30
max_memory_mb = 2048
max_concurrent = 4
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file gives every default of the plan."""
    c = load_config(write(tmp_path, ""))
    assert (c.server.host, c.server.port) == ("127.0.0.1", 8000)
    assert c.server.storage_path == Path("./data")
    assert c.server.max_concurrent == 1
    assert c.server.upload_expiry_minutes == 15
    assert c.server.max_upload_mb == 2048
    assert c.server.trusted_proxies == ()
    assert c.docker.image == "ghcr.io/wafer-space/gf180mcu-precheck:latest"
    assert c.docker.container_prefix == "precheck-"
    assert c.docker.pull == "missing"
    assert c.auth.required is False
    assert c.auth.allowed_ips == ()
    assert c.auth.api_keys == ()
    assert c.defaults.slot == "1x1"
    p = c.preflight
    assert (p.enabled, p.max_seconds, p.max_memory_mb, p.max_concurrent) == (True, 60, 4096, 2)


def test_plan_minimal_file(tmp_path: Path) -> None:
    """The plan's minimal example loads with defaults for the rest."""
    c = load_config(
        write(
            tmp_path,
            '[server]\nhost = "127.0.0.1"\nport = 8080\n\n'
            '[docker]\nimage = "ghcr.io/wafer-space/gf180mcu-precheck:latest"\n',
        )
    )
    assert c.server.port == 8080
    assert c.server.upload_expiry_minutes == 15
    assert c.docker.container_prefix == "precheck-"


def test_every_key(tmp_path: Path) -> None:
    """Every key of every table is read into the config."""
    digest = hashlib.sha256(b"dev-secret").hexdigest()
    c = load_config(write(tmp_path, FULL.replace("{digest}", digest)))
    s, d, a = c.server, c.docker, c.auth
    assert (s.host, s.port, s.storage_path) == ("0.0.0.0", 9123, Path("/srv/precheck"))
    assert (s.max_concurrent, s.upload_expiry_minutes, s.max_upload_mb) == (3, 30, 512)
    assert s.trusted_proxies == ("10.0.0.1", "fd00::/8")
    assert (d.image, d.container_prefix, d.url) == (
        "example.org/precheck:1.2",
        "pc-",
        "tcp://docker.internal:2375",
    )
    assert (d.memory_limit, d.timeout_minutes, d.pull, d.pids_limit) == ("8g", 60, "never", 1024)
    assert a.required is True
    assert a.allowed_ips == ("192.168.1.0/24", "10.0.0.5")
    assert [(k.name, k.key, k.key_sha256) for k in a.api_keys] == [
        ("ci-server", "ws_key_abc123", ""),
        ("developer", "", digest),
    ]
    assert c.defaults.slot == "0p5x1"
    p = c.preflight
    assert (p.enabled, p.max_seconds, p.max_memory_mb, p.max_concurrent) == (False, 30, 2048, 4)


def test_env_expansion_in_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` in a key is replaced by the environment variable's value."""
    monkeypatch.setenv("PRECHECK_CFG_TEST_KEY", "ws_key_from_env")
    c = load_config(
        write(tmp_path, '[[auth.api_keys]]\nname = "env"\nkey = "pre-${PRECHECK_CFG_TEST_KEY}"\n')
    )
    assert c.auth.api_keys[0].key == "pre-ws_key_from_env"


def test_env_variable_not_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key naming an unset variable is an error, not a literal `${...}` key."""
    monkeypatch.delenv("PRECHECK_CFG_UNSET", raising=False)
    path = write(tmp_path, '[[auth.api_keys]]\nname = "env"\nkey = "${PRECHECK_CFG_UNSET}"\n')
    message = refused(path)
    assert str(path) in message
    assert "auth.api_keys[0].key" in message
    assert "PRECHECK_CFG_UNSET" in message


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    path = tmp_path / "nowhere" / "config.toml"
    message = refused(path)
    assert str(path) in message
    assert "not found" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ("[server]\nprot = 8000\n", "server.prot"),
        ("[srever]\nport = 8000\n", "srever"),
        ('[[auth.api_keys]]\nname = "a"\nkey = "b"\nscope = "all"\n', "auth.api_keys[0].scope"),
        ('[server]\nport = "8000"\n', "server.port"),
        ("[server]\nmax_concurrent = 1.5\n", "server.max_concurrent"),
        ("[server]\nstorage_path = 5\n", "server.storage_path"),
        ('[auth]\nrequired = "yes"\n', "auth.required"),
        ("[server]\nport = true\n", "server.port"),
        ('[auth]\nallowed_ips = "10.0.0.0/8"\n', "auth.allowed_ips"),
        ('[auth]\nallowed_ips = ""\n', "auth.allowed_ips"),
        ('[server]\ntrusted_proxies = "127.0.0.1"\n', "server.trusted_proxies"),
        ('[auth]\napi_keys = "ws_key"\n', "auth.api_keys"),
        ('[defaults]\nslot = "2x2"\n', "defaults.slot"),
        ("[auth]\nrequired = true\n", "auth.required"),
        (
            '[[auth.api_keys]]\nname = "a"\nkey = "b"\nkey_sha256 = "' + "0" * 64 + '"\n',
            "auth.api_keys[0]",
        ),
        ('[[auth.api_keys]]\nname = "a"\n', "auth.api_keys[0]"),
        ('[[auth.api_keys]]\nname = "a"\nkey_sha256 = "XYZ"\n', "auth.api_keys[0].key_sha256"),
        ('[[auth.api_keys]]\nkey = "b"\n', "auth.api_keys[0].name"),
        (
            '[[auth.api_keys]]\nname = "a"\nkey = "b"\n[[auth.api_keys]]\nname = "a"\nkey = "c"\n',
            "auth.api_keys[1].name",
        ),
        ('[auth]\nallowed_ips = ["10.0.0.0/33"]\n', "auth.allowed_ips[0]"),
        ('[server]\ntrusted_proxies = ["proxy.local"]\n', "server.trusted_proxies[0]"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nmax_concurrent = 0\n", "server.max_concurrent"),
        ("[server]\nmax_upload_mb = 0\n", "server.max_upload_mb"),
        ('[docker]\npull = "sometimes"\n', "docker.pull"),
        ('[docker]\nimage = ""\n', "docker.image"),
        ("[preflight]\nmax_seconds = 0\n", "preflight.max_seconds"),
        ("[preflight]\nmax_memory_mb = 10\n", "preflight.max_memory_mb"),
        ("[preflight]\nmax_concurrent = 0\n", "preflight.max_concurrent"),
        ('[preflight]\nenabled = "yes"\n', "preflight.enabled"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """Every unusable value is a ConfigError whose message names the file and the key."""
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}: "), message
    assert key in message, message


def test_user_keys_with_auth_off_are_refused(tmp_path: Path) -> None:
    """With `auth.required = false` user-role keys would isolate nothing (no key is an admin):
    the config is refused with a message naming those keys; admin keys alone are fine."""
    keys = (
        '[[auth.api_keys]]\nname = "alice"\nkey = "a"\nrole = "user"\n'
        '[[auth.api_keys]]\nname = "root"\nkey = "r"\n'
        '[[auth.api_keys]]\nname = "bob"\nkey = "b"\nrole = "user"\n'
    )
    path = write(tmp_path, "[auth]\nrequired = false\n" + keys)
    message = refused(path)
    assert message.startswith(f"{path}: auth.required: "), message
    assert "'alice', 'bob'" in message and "'root'" not in message
    assert load_config(write(tmp_path, "[auth]\nrequired = true\n" + keys)).auth.required
    admins = '[[auth.api_keys]]\nname = "root"\nkey = "r"\n'
    assert not load_config(write(tmp_path, "[auth]\nrequired = false\n" + admins)).auth.required


@pytest.mark.parametrize("name", ["anonymous", "cli", "server", "supervisor"])
def test_a_config_key_may_not_take_a_name_the_server_records(tmp_path: Path, name: str) -> None:
    """A key named as one of the server's own actors would act as it: refused, naming the key."""
    path = write(tmp_path, f'[[auth.api_keys]]\nname = "{name}"\nkey = "k"\n')
    message = refused(path)
    assert message.startswith(f"{path}: auth.api_keys[0].name: "), message
    assert repr(name) in message


def test_invalid_toml(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError naming the file."""
    path = write(tmp_path, "[server\nport = 1\n")
    message = refused(path)
    assert str(path) in message
    assert "TOML" in message


def test_serve_with_missing_config_exits_with_one_line(tmp_path: Path) -> None:
    """`serve --config missing.toml` exits non-zero with one stderr line naming the file."""
    proc = subprocess.run(
        [sys.executable, "-m", "precheck", "serve", "--config", "missing.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "missing.toml" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "data").exists()


def test_serve_with_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    """`serve` on a file with an unknown key exits non-zero with one line naming file and key."""
    write(tmp_path, "[server]\nprot = 1\n", "bad.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "precheck", "serve", "--config", "bad.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "bad.toml" in lines[0] and "server.prot" in lines[0]


def tls_files(tmp_path: Path) -> dict[str, str]:
    """Three PEM file paths that exist (their content is read only when connecting)."""
    paths = {}
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = tmp_path / f"{key}.pem"
        path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
        paths[key] = str(path)
    return paths


def test_one_engine_form_is_the_local_engine(tmp_path: Path) -> None:
    """`[docker] url` and `server.max_concurrent` are the one engine `local`, with [docker]'s
    memory limit and pull policy."""
    c = load_config(
        write(
            tmp_path,
            '[server]\nmax_concurrent = 3\n[docker]\nurl = "unix:///tmp/d.sock"\n'
            'memory_limit = "2g"\npull = "never"\n',
        )
    )
    (e,) = c.engines
    assert (e.name, e.url, e.max_concurrent, e.memory_limit, e.pull, e.tls) == (
        "local",
        "unix:///tmp/d.sock",
        3,
        "2g",
        "never",
        False,
    )
    assert c.max_concurrent == 3
    assert (c.docker.engine_grace_seconds, c.docker.max_attempts) == (60, 2)
    assert c.docker.stats_seconds == 15


def test_engine_list(tmp_path: Path) -> None:
    """Every key of `[[docker.engines]]` is read; left-out memory limit, pull and cpus come
    from [docker]; the slots add up."""
    tls = tls_files(tmp_path)
    c = load_config(
        write(
            tmp_path,
            '[docker]\nmemory_limit = "4g"\nengine_grace_seconds = 30\nmax_attempts = 3\n'
            "cpus = 1.5\n"
            '[[docker.engines]]\nname = "here"\nurl = "unix:///run/d.sock"\nmax_concurrent = 2\n'
            '[[docker.engines]]\nname = "far-1"\nurl = "tcp://10.0.0.7:2376"\n'
            f'tls_ca = "{tls["tls_ca"]}"\ntls_cert = "{tls["tls_cert"]}"\n'
            f'tls_key = "{tls["tls_key"]}"\nmax_concurrent = 4\nmemory_limit = "16g"\n'
            'pull = "never"\ncpus = 8\n',
        )
    )
    here, far = c.engines
    assert (here.cpus, far.cpus) == (1.5, 8)
    assert (here.name, here.url, here.max_concurrent, here.memory_limit, here.pull) == (
        "here",
        "unix:///run/d.sock",
        2,
        "4g",
        "missing",
    )
    assert (far.name, far.url, far.max_concurrent, far.memory_limit, far.pull) == (
        "far-1",
        "tcp://10.0.0.7:2376",
        4,
        "16g",
        "never",
    )
    assert far.tls and (far.tls_ca, far.tls_cert, far.tls_key) == (
        tls["tls_ca"],
        tls["tls_cert"],
        tls["tls_key"],
    )
    assert c.max_concurrent == 6
    assert (c.docker.engine_grace_seconds, c.docker.max_attempts) == (30, 3)


ONE = '[[docker.engines]]\nname = "a"\nurl = "unix:///run/a.sock"\n'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[docker.engines]]\nurl = "unix:///run/a.sock"\n', "docker.engines[0].name"),
        ('[[docker.engines]]\nname = ""\nurl = "unix:///a"\n', "docker.engines[0].name"),
        ('[[docker.engines]]\nname = "a b"\nurl = "unix:///a"\n', "docker.engines[0].name"),
        (ONE + ONE, "docker.engines[1].name"),
        ('[[docker.engines]]\nname = "a"\n', "docker.engines[0].url"),
        ('[[docker.engines]]\nname = "a"\nurl = "http://h:1"\n', "docker.engines[0].url"),
        ('[[docker.engines]]\nname = "a"\nurl = "tcp://h"\n', "docker.engines[0].url"),
        ('[[docker.engines]]\nname = "a"\nurl = "tcp://h:99999"\n', "docker.engines[0].url"),
        ('[[docker.engines]]\nname = "a"\nurl = "unix://run/a"\n', "docker.engines[0].url"),
        (ONE + "max_concurrent = 0\n", "docker.engines[0].max_concurrent"),
        (ONE + 'max_concurrent = "2"\n', "docker.engines[0].max_concurrent"),
        (ONE + 'memory_limit = "1k"\n', "docker.engines[0].memory_limit"),
        (ONE + 'memory_limit = "lots"\n', "docker.engines[0].memory_limit"),
        (ONE + 'pull = "sometimes"\n', "docker.engines[0].pull"),
        (ONE + "cpus = -1\n", "docker.engines[0].cpus"),
        ("[docker]\ncpus = nan\n", "docker.cpus"),
        ("[docker]\ncpus = 5000\n", "docker.cpus"),
        (ONE + "colour = 1\n", "docker.engines[0].colour"),
        (ONE + 'tls_ca = "/nowhere/ca.pem"\n', "docker.engines[0]"),
        ('[docker]\nengines = "a"\n', "docker.engines"),
        ('[docker]\nurl = "unix:///b"\n' + ONE, "docker.url"),
        ("[server]\nmax_concurrent = 2\n" + ONE, "server.max_concurrent"),
        ("[docker]\nengine_grace_seconds = 0\n", "docker.engine_grace_seconds"),
        ("[docker]\nmax_attempts = 0\n", "docker.max_attempts"),
        ("[docker]\nstats_seconds = 0.5\n", "docker.stats_seconds"),
        ("[docker]\nstats_seconds = nan\n", "docker.stats_seconds"),
    ],
)
def test_bad_engine_names_key(tmp_path: Path, text: str, key: str) -> None:
    """Every unusable engine entry is a ConfigError naming the file and the key."""
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}: "), message
    assert key in message, message


def test_tls_needs_tcp_and_existing_files(tmp_path: Path) -> None:
    """TLS files must exist, and only a tcp:// engine speaks TLS."""
    tls = tls_files(tmp_path)
    keys = "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    message = refused(write(tmp_path, ONE + keys))
    assert "docker.engines[0].url" in message and "TLS" in message
    missing = keys.replace(tls["tls_key"], str(tmp_path / "gone.pem"))
    tcp = '[[docker.engines]]\nname = "a"\nurl = "tcp://h:2376"\n'
    message = refused(write(tmp_path, tcp + missing))
    assert "docker.engines[0].tls_key" in message and "gone.pem" in message


def test_notify_table_with_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[notify]` and `[notify.smtp]` load; the secret and password come from `${ENV}`; the
    SMTP `from` key is the sender; `[[notify.defaults]]` are listed."""
    monkeypatch.setenv("HOOK_SECRET", "whsec_MDEyMzQ1Njc4OQ==")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    text = """
[notify]
allowed_hosts = ["hooks.example.org", "*.ci.example.org", "10.0.0.0/8"]
webhook_secret = "${HOOK_SECRET}"

[notify.smtp]
host = "mail.example.org"
starttls = true
password = "${SMTP_PASSWORD}"
from = "precheck@example.org"

[[notify.defaults]]
key = "ci-server"
webhook = "https://hooks.example.org/x"
"""
    n = load_config(write(tmp_path, text)).notify
    assert n.webhook_secret == "whsec_MDEyMzQ1Njc4OQ=="
    assert (n.smtp.password, n.smtp.port, n.smtp.tls) == ("pw", 25, False)
    assert n.smtp.sender == "precheck@example.org"
    assert n.defaults[0].key == "ci-server"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[notify]\nallowed_hosts = ["a b"]\nwebhook_secret = "s"', "notify.allowed_hosts[0]"),
        ('[notify]\nallowed_hosts = ["example.org"]', "notify.webhook_secret"),
        ('[notify]\nwebhook_secret = "whsec_***"', "notify.webhook_secret"),
        ('[notify]\nwebhook_secret = "${NOT_SET_ANYWHERE}"', "notify.webhook_secret"),
        ("[notify]\nretry_first_seconds = 0", "notify.retry_first_seconds"),
        ("[notify.smtp]\nport = 0", "notify.smtp.port"),
        ("[notify.smtp]\ntls = true\nstarttls = true", "notify.smtp"),
        ('[[notify.defaults]]\nkey = "k"', "notify.defaults[0]"),
        ('[notify.smtp]\nsender = "x"', "unknown key notify.smtp.sender"),
    ],
)
def test_bad_notify_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    """A bad `[notify]` value stops the start with a message naming its key."""
    assert key in refused(write(tmp_path, text))
