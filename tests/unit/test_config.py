"""Configuration: examples load, errors name the file, the key and the fault."""

import ast
import subprocess
import sys
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from hasip.app import config as config_module
from hasip.app.config import (
    _SECTIONS,
    ClusterConfig,
    Config,
    ConfigError,
    ControlConfig,
    _Section,
    check_auth,
    config_from_dict,
    load_config,
)
from hasip.sip.transaction import Timers
from hasip.sip.uri import SipUri
from keepalive.config import Timing

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_examples_are_valid() -> None:
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        load_config(path)
    single = load_config(ROOT / "examples" / "single-node.toml")
    assert [str(a) for a in single.sip.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert [str(u) for u in single.routing.next_hop] == ["sip:127.0.0.1:5071",
                                                         "sip:127.0.0.1:5072"]
    assert single.timers.non_invite_final == 10.0 and single.timers.invite_final == 120.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[sip]\nlisten = ["udp:127.0.0.1"]', "sip.listen[0]: 'udp:127.0.0.1' is not"),
        ('[sip]\nlisten = ["sctp:127.0.0.1:5060"]', "sip.listen[0]: transport 'sctp'"),
        ('[sip]\nlisten = ["udp:example.com:5060"]', "is not an IP address"),
        ('[sip]\nlisten = ["udp:127.0.0.1:70000"]', "port 70000 is outside"),
        ('[sip]\nlisten = ["udp:127.0.0.1:\u00b2"]', "'udp:127.0.0.1:\u00b2' is not"),
        ("[sip]\nmax_message_size = 100", "sip.max_message_size: 100 is outside"),
        ('[sip]\nmax_forwards = "70"', "sip.max_forwards: expected an integer, got str"),
        ("[sip]\nlisten = []", "sip.listen: needs at least one address"),
        ("[timers]\nt1 = true", "timers.t1: expected a number, got a boolean"),
        ("[timers]\nnon_invite_fnal = 3", "timers: unknown key(s) non_invite_fnal"),
        ('[routing]\nnext_hop = ["http://x"]', "routing.next_hop[0]: malformed SIP URI"),
        ('[routing]\nnext_hop = ["sip:x;transport=sctp"]', "transport 'sctp' is not supported"),
        ('[log]\nlevel = "loud"', "log.level: 'loud' is not one of"),
        ('[metrics]\nlisten = "9060"', "metrics.listen: '9060' is not HOST:PORT"),
        ("[sipp]\n", "unknown section(s) sipp"),
        ("[registrar]\nmin_expires = 100\nmax_expires = 50", "registrar.min_expires: 100 is above"),
        ('[location]\nbackend = "mysql"', "location.mysql_url: backend is mysql"),
        ('[location]\nbackend = "oracle"', "location.backend: 'oracle' is not one of"),
        ('[auth]\nsource = "radius"', "radius.servers: auth.source is radius"),
        ('[auth]\nsource = "radius"\n[radius]\nservers = ["127.0.0.1:1812"]',
         "radius.secret: auth.source is radius"),
        ('[auth]\ntrusted = ["10.0.0.0/33"]', "auth.trusted[0]: '10.0.0.0/33' is not"),
        ('[auth]\nalgorithms = ["SHA-512"]', "auth.algorithms: 'SHA-512' is not one of"),
        ('[radius]\nservers = ["x:99999"]', "radius.servers[0]: 'x:99999' is not HOST:PORT"),
        ('[radius]\nattributes = "diameter"', "radius.attributes: 'diameter' is not one of"),
        ('[nat]\ndetect = ["stun"]', "nat.detect: 'stun' is not one of"),
        ('[dispatcher]\nalgorithm = "fastest"', "dispatcher.algorithm: algorithm 'fastest'"),
        ("[dispatcher]\nalgorithm = 5", "dispatcher.algorithm: algorithm 5 is not one of"),
        ('[dispatcher]\ndestinations = ["x sip:a"]', "dispatcher.destinations:1: expected SETID"),
        ('[dispatcher]\nlist_file = "/nonexistent/ds.list"', "dispatcher.list_file: cannot read"),
        ('[dispatcher]\ndestinations = ["1 sip:a;transport=sctp"]', "transport 'sctp'"),
        ('[cluster]\nvips = ["198.18.0.100/24@lan0"]', "cluster.zookeeper: VIPs are listed"),
        ('[cluster]\nzookeeper = "zk:2181"\nvips = ["198.18.0.100/24@lan0"]',
         "cluster.vips[0]: 198.18.0.100 is in no sip.listen entry"),
        ('[cluster]\nzookeeper = "zk:2181"\nvips = ["198.18.0.100/24"]',
         "cluster.vips[0]: '198.18.0.100/24': expected ADDRESS/PREFIX@INTERFACE"),
        ('[cluster]\nroot = "hasip"', "cluster.root: 'hasip' must start with /"),
        ("[cluster]\nsession_timeout = 0.1", "cluster.session_timeout: 0.1 is outside"),
        ('[dialog]\ntimeout = "long"', "dialog.timeout: expected a number"),
        ("sip = 3", "sip: expected a table"),
        ("[sip\n", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_fault(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path) + ":")
    assert expected in message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/hasip.toml")


def test_check_config_command(tmp_path: Path) -> None:
    # The example as an operator uses it: with a users file of their own.
    users = tmp_path / "users"
    users.write_text("1001:hasip:" + "0" * 32 + "\n")
    example = (ROOT / "examples" / "single-node.toml").read_text()
    assert 'users_file = "/etc/hasip/users"' in example
    mine = tmp_path / "node.toml"
    mine.write_text(example.replace("/etc/hasip/users", str(users)))
    ok = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(mine)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = write(tmp_path, "[timers]\nt1 = -1\n")
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{bad}: timers.t1: -1.0 is outside" in res.stderr


def test_check_config_reads_the_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:hasip:not-a-hash\n")
    cfg = write(tmp_path, f'[auth]\nusers_file = "{users}"\n')
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{cfg}: auth.users_file: {users}:1: HA1 must be" in res.stderr


def test_no_default_passwords(tmp_path: Path) -> None:
    """A file auth source without a users file is an error that names the
    key, in a file and on the embedded defaults (``hasip run`` without -c):
    the demo accounts only when asked for by name."""
    for args in (["-c", str(write(tmp_path, '[auth]\nsource = "file"\n'))], []):
        res = subprocess.run([sys.executable, "-m", "hasip", "check-config", *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stdout
        assert "auth.users_file: give the users file" in res.stderr
    demo = write(tmp_path, "[auth]\ndemo_users = true\n")
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(demo)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "OK" in res.stdout
    both = write(tmp_path, f'[auth]\ndemo_users = true\nusers_file = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match=r"auth\.demo_users: give users_file or demo_users"):
        check_auth(load_config(both))


def test_a_cluster_needs_the_shared_secret(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[auth]\ndemo_users = true\n[cluster]\nzookeeper = "127.0.0.1:2181"\n'
                          'zookeeper_user = "hasip"\nzookeeper_password = "a-long-zk-password"\n')
    with pytest.raises(ConfigError, match=r"auth\.secret: a cluster needs a shared secret"):
        check_auth(load_config(cfg))


def test_security_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[auth]\ndemo_users = true\n[security]\nrate = 5\n'
                                      'exempt = ["198.51.100.0/24"]\n'))
    assert cfg.security.rate == 5.0 and cfg.security.exempt == ["198.51.100.0/24"]
    with pytest.raises(ConfigError, match=r"security.exempt\[0\]: 'nope' is not an address"):
        load_config(write(tmp_path, '[auth]\ndemo_users = true\n[security]\nexempt = ["nope"]\n'))
    with pytest.raises(ConfigError, match=r"security\.max_ban_time: 1\.0 is outside"):
        load_config(write(tmp_path, '[auth]\ndemo_users = true\n[security]\nmax_ban_time = 1\n'))


def test_dispatcher_sets_from_config_and_list_file(tmp_path: Path) -> None:
    ds = tmp_path / "dispatcher.list"
    ds.write_text("1 sip:192.168.0.1:5060\n1 sip:192.168.0.2:5060\n2 sip:192.168.0.3:5060\n")
    cfg = load_config(write(tmp_path, f'[dispatcher]\nalgorithm = 9\nlist_file = "{ds}"\n'
                                      'destinations = ["1 sip:192.168.0.4 0 0 weight=5"]\n'))
    assert cfg.dispatcher.algorithm == "weighted"
    assert [(d.set_id, d.key, d.weight) for d in cfg.dispatcher.destinations] == [
        (1, "sip:192.168.0.4", 5), (1, "sip:192.168.0.1:5060", 1),
        (1, "sip:192.168.0.2:5060", 1), (2, "sip:192.168.0.3:5060", 1)]


def secret(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD_TOKEN = "0123456789abcdef0123456789abcdef"


def test_the_control_api_is_off_without_a_token_and_on_loopback_with_one(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).control.listen is None
    token = secret(tmp_path, "control.token", GOOD_TOKEN + "\n")
    cfg = load_config(write(tmp_path, f'[control]\ntoken_file = "{token}"\n'))
    assert cfg.control.listen == ("127.0.0.1", 9061) and cfg.control.token == GOOD_TOKEN
    assert GOOD_TOKEN not in repr(cfg)
    cfg = load_config(write(tmp_path, f'[control]\ntoken_file = "{token}"\nlisten = "off"\n'))
    assert cfg.control.listen is None and cfg.control.token == GOOD_TOKEN
    cfg = load_config(write(tmp_path, f'[control]\ntoken_file = "{token}"\n'
                                      'listen = "[::1]:9100"\n'))
    assert cfg.control.listen == ("::1", 9100)


@pytest.mark.parametrize(
    ("control", "files", "expected"),
    [
        ('listen = "127.0.0.1:9061"', {}, "control.token_file: the control API needs a token "
                                          "file (control.listen is '127.0.0.1:9061')"),
        ('listen = "0.0.0.0:9061"', {}, "control.token_file: the control API needs a token file"),
        ('listen = "localhost:9061"', {}, "control.listen: 'localhost' is not an IP address"),
        ('token_file = "{t}"', {"t": ("", 0o600)}, "control.token_file: {t} is empty"),
        ('token_file = "{t}"', {"t": ("short-token", 0o600)},
         "control.token_file: {t} is too short (11 characters; 16 or more"),
        ('token_file = "{t}"', {"t": (GOOD_TOKEN, 0o644)},
         "control.token_file: {t} is readable or writable by group or others (mode 0644): "
         "chmod 600 {t}"),
        ('token_file = "{t}"', {"t": (GOOD_TOKEN, 0o620)}, "(mode 0620)"),
        ('token_file = "{t}"', {"t": ("two words in the token file", 0o600)},
         "control.token_file: {t} must be one line of printable ASCII"),
        ('token_file = "{t}"', {}, "control.token_file: {t}: no such file"),
        ('token_file = "{t}"\nread_token_file = "{r}"', {"t": (GOOD_TOKEN, 0o600),
                                                          "r": (GOOD_TOKEN, 0o600)},
         "control.read_token_file: the read-only token must differ"),
        ('read_token_file = "{r}"', {"r": (GOOD_TOKEN, 0o600)},
         "control.token_file: read_token_file is given"),
        ('token_file = "{t}"\norigins = ["*"]', {"t": (GOOD_TOKEN, 0o600)},
         "control.origins[0]: '*' is not an origin"),
        ('token_file = "{t}"\nhosts = ["evil.example/x"]', {"t": (GOOD_TOKEN, 0o600)},
         "control.hosts[0]: 'evil.example/x' is not a host name"),
        ('token_file = "{t}"\ntls_key = "{t}"', {"t": (GOOD_TOKEN, 0o600)},
         "control.tls_cert: TLS needs tls_cert and tls_key together"),
        ('token_file = "{t}"\ntls_cert = "{t}"\ntls_key = "{t}"', {"t": (GOOD_TOKEN, 0o600)},
         "control.tls_cert: cannot load"),
        ('tls_ca = "/nonexistent/ca.pem"', {}, "control.tls_ca: cannot read /nonexistent/ca.pem"),
        ("tokenfile = 3", {}, "control: unknown key(s) tokenfile"),
    ],
)
def test_control_errors_name_the_key(tmp_path: Path, control: str, files: dict[str, tuple],
                                     expected: str) -> None:
    names = {k: str(tmp_path / f"{k}.secret") for k in ("t", "r")}
    for key, (text, mode) in files.items():
        secret(tmp_path, f"{key}.secret", text, mode)
    path = write(tmp_path, "[control]\n" + control.format(**names) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected.format(**names) in str(info.value)


@pytest.mark.parametrize(
    ("control", "mode", "expected"),
    [
        ('listen = "127.0.0.1:9061"', 0o600, "control.token_file: the control API needs a token"),
        ('listen = "0.0.0.0:9061"', 0o600, "control.token_file: the control API needs a token"),
        ('token_file = "{t}"', 0o644, "control.token_file: {t} is readable or writable by"),
    ],
)
def test_check_config_refuses_a_control_api_without_a_safe_token(
        tmp_path: Path, control: str, mode: int, expected: str) -> None:
    token = str(secret(tmp_path, "control.token", GOOD_TOKEN, mode))
    cfg = write(tmp_path, "[control]\n" + control.format(t=token) + "\n")
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{cfg}: {expected.format(t=token)}" in res.stderr
    assert GOOD_TOKEN not in res.stderr


@pytest.mark.parametrize(
    ("cluster", "password", "expected"),
    [
        ("", None, "cluster.zookeeper_user: a cluster needs ZooKeeper credentials"),
        ('zookeeper_user = "hasip"', None, "cluster.zookeeper_password_file: zookeeper_user is "
                                           "given: give its password"),
        ('zookeeper_password = "0123456789abcdef"', None,
         "cluster.zookeeper_user: a ZooKeeper password is given without zookeeper_user"),
        ('zookeeper_user = "has:ip"\nzookeeper_password = "0123456789abcdef"', None,
         "cluster.zookeeper_user: ZooKeeper user 'has:ip'"),
        ('zookeeper_user = "hasip"\nzookeeper_password = "short"', None,
         "cluster.zookeeper_password: the ZooKeeper password is too short"),
        ('zookeeper_user = "hasip"\nzookeeper_password_file = "{p}"', (GOOD_TOKEN, 0o640),
         "cluster.zookeeper_password_file: {p} is readable or writable by group or others"),
        ('zookeeper_user = "hasip"\nzookeeper_password_file = "{p}"', ("", 0o600),
         "cluster.zookeeper_password_file: {p} is empty"),
        ('zookeeper_user = "hasip"\nzookeeper_password_file = "{p}"', None,
         "cluster.zookeeper_password_file: {p}: no such file"),
        ('zookeeper_user = "hasip"\nzookeeper_password = "0123456789abcdef"\n'
         'zookeeper_password_file = "{p}"', (GOOD_TOKEN, 0o600),
         "cluster.zookeeper_password: give zookeeper_password or zookeeper_password_file"),
    ],
)
def test_a_cluster_needs_zookeeper_credentials(tmp_path: Path, cluster: str,
                                               password: tuple[str, int] | None,
                                               expected: str) -> None:
    path = str(tmp_path / "zk.password")
    if password is not None:
        secret(tmp_path, "zk.password", *password)
    cfg = write(tmp_path, '[cluster]\nzookeeper = "127.0.0.1:2181"\n' + cluster.format(p=path)
                + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"{cfg}: ")
    assert expected.format(p=path) in str(info.value)


def test_zookeeper_credentials_from_a_file_or_inline(tmp_path: Path) -> None:
    password = secret(tmp_path, "zk.password", GOOD_TOKEN + "\n")
    cfg = load_config(write(tmp_path, '[cluster]\nzookeeper = "127.0.0.1:2181"\n'
                                      'zookeeper_user = "hasip"\n'
                                      f'zookeeper_password_file = "{password}"\n'))
    creds = cfg.cluster.credentials()
    assert creds is not None and (creds.user, creds.password) == ("hasip", GOOD_TOKEN)
    assert GOOD_TOKEN not in repr(cfg) and GOOD_TOKEN not in repr(creds)
    inline = load_config(write(tmp_path, '[cluster]\nzookeeper = "127.0.0.1:2181"\n'
                                         'zookeeper_user = "hasip"\n'
                                         f'zookeeper_password = "{GOOD_TOKEN}"\n'))
    assert inline.cluster.credentials() == creds
    assert load_config(write(tmp_path, "")).cluster.credentials() is None


def test_check_config_refuses_a_cluster_without_zookeeper_credentials(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[cluster]\nzookeeper = "127.0.0.1:2181"\n')
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"{cfg}: cluster.zookeeper_user: a cluster needs ZooKeeper credentials" in res.stderr


# Timers' keyword arguments, which are its attributes.
TIMER_NAMES = ("t1", "t2", "t4", "non_invite_final", "invite_final")


def plain(value: Any) -> Any:
    """A configuration as dicts, lists and scalars, to compare by value
    (Timers has slots and no __eq__; URIs compare by their text)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Timers):
        return {name: getattr(value, name) for name in TIMER_NAMES}
    if isinstance(value, SipUri):
        return str(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def section_fields(value: object) -> set[str]:
    """The keys a section's object stands for: its fields, but for the
    documented exceptions."""
    if isinstance(value, Timers):
        # [timers] is the transactions' own Timers: slots, not a dataclass
        # (and compiled, with no __slots__ to read); its constructor takes
        # the names it keeps (and holds the defaults).
        given = {name: float(i + 1) for i, name in enumerate(TIMER_NAMES)}
        built = Timers(**given)
        assert {name: getattr(built, name) for name in TIMER_NAMES} == given
        return set(TIMER_NAMES)
    assert is_dataclass(value)
    names = {f.name for f in fields(value)}
    if isinstance(value, ControlConfig):
        names -= {"token", "read_token"}          # read from token_file, read_token_file
    if isinstance(value, ClusterConfig):
        # timing is keepalive's Timing, shared with the standalone command:
        # its fields are keys of [cluster] itself.
        names = (names - {"timing"}) | {f.name for f in fields(Timing)}
    return names


def test_every_section_is_the_config_attribute_of_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each TOML section is the Config attribute of the same name, an object
    whose fields are exactly the keys the parser accepts in that section."""
    keys: dict[str, set[str]] = {}
    finish = _Section.finish

    def record(sec: _Section) -> None:
        keys[sec.name] = set(sec.keys)
        finish(sec)

    monkeypatch.setattr(_Section, "finish", record)
    cfg = config_from_dict({})
    assert [f.name for f in fields(Config)] == ["path", *_SECTIONS]
    assert list(keys) == list(_SECTIONS)
    for name in _SECTIONS:
        assert keys[name] == section_fields(getattr(cfg, name)), name
    # Those are the keys a file may give: each is read (a wrong type, not
    # an unknown key).
    for name, names in keys.items():
        for key in names:
            with pytest.raises(ConfigError, match=rf": {name}\.{key}: expected "):
                config_from_dict({name: {key: object()}})


def test_the_parser_takes_every_default_from_the_dataclasses() -> None:
    """Nothing given, the parser yields the dataclasses' defaults (what
    ``hasip run`` without -c uses, Config()): it writes no default of its own."""
    parsed = plain(config_from_dict({}, "<embedded defaults>"))
    embedded = plain(Config())
    # The one derived default: an empty radius.nas_identifier is the node's name.
    assert embedded["radius"].pop("nas_identifier") == ""
    assert parsed["radius"].pop("nas_identifier") == Config().node.name
    assert parsed == embedded


def test_the_parser_writes_no_literal_default() -> None:
    """Every default the section readers get is a dataclass field's value
    (``sec.number("t1", t.t1, ...)``), never a literal written a second time."""
    default_at = {"get": 2, "number": 1, "integer": 1, "choice": 1, "str_list": 1,
                  "networks": 1, "listen_address": 0}
    tree = ast.parse(Path(config_module.__file__).read_text())
    defaults = [(node, node.args[default_at[node.func.attr]]) for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "sec"
                and node.func.attr in default_at]
    assert len(defaults) > 50
    literals = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set)
    written_twice = [f"line {call.lineno}: {ast.unparse(call)}" for call, default in defaults
                     if isinstance(default, literals)]
    assert written_twice == []


def test_the_example_holds_the_embedded_defaults() -> None:
    """The README says examples/single-node.toml is the embedded defaults:
    every key it gives has the default value, but for two."""
    example = ROOT / "examples" / "single-node.toml"
    raw = tomllib.loads(example.read_text())
    loaded, defaults = plain(load_config(example)), plain(Config())
    differ = {(name, key) for name, section in raw.items() for key in section
              if loaded[name][key] != defaults[name][key]}
    # A users file (there are no default passwords) and a domain for the demo.
    assert differ == {("auth", "users_file"), ("sip", "domains")}


def test_check_config_names_what_routes_calls(tmp_path: Path) -> None:
    """With dispatcher destinations, check-config lists them (by set) and
    not the embedded next hops, which are unused then; without, the next
    hops are what routes calls and are listed."""
    cfg = write(tmp_path, '[auth]\ndemo_users = true\n[dispatcher]\nset = 2\ndestinations = [\n'
                          '  "2 sip:192.0.2.21:5060 0 0 weight=50",\n'
                          '  "2 sip:192.0.2.22:5060;transport=tcp",\n'
                          '  "3 sip:192.0.2.31:5060"]\n')
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "127.0.0.1:5071" not in res.stdout and "next hop" not in res.stdout
    lines = res.stdout.splitlines()
    assert "calls for unregistered users: dispatcher set 2 (round_robin)" in lines
    assert ("  dispatcher set 2: sip:192.0.2.21:5060, sip:192.0.2.22:5060;transport=tcp"
            in lines)
    assert "  dispatcher set 3: sip:192.0.2.31:5060" in lines
    hops = write(tmp_path, '[auth]\ndemo_users = true\n[routing]\n'
                           'next_hop = ["sip:192.0.2.41:5060"]\n')
    res = subprocess.run([sys.executable, "-m", "hasip", "check-config", "-c", str(hops)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ("calls for unregistered users: routing.next_hop (round_robin): sip:192.0.2.41:5060"
            in res.stdout.splitlines())


def test_media_section_is_checked_and_names_the_key() -> None:
    from hasip.app.config import ConfigError, config_from_dict

    cfg = config_from_dict({"media": {"relay": "never", "rtpengine": ["udp:127.0.0.1:2223=2"],
                                      "interfaces": {"198.18.0.100": "vip_a"}}}, "m.toml")
    assert cfg.media.rtpengine == ["udp:127.0.0.1:2223=2"]
    assert cfg.media.interfaces == {"198.18.0.100": "vip_a"}
    for raw, key in (({"rtpengine": ["tcp:1.2.3.4:5"]}, "media.rtpengine[0]"),
                     ({"relay": "sometimes"}, "media.relay"),
                     ({"replace": ["everything"]}, "media.replace[0]"),
                     ({"interfaces": {"not-an-ip": "x"}}, "media.interfaces"),
                     ({"interfaces": {"198.18.0.100": "a b"}}, "media.interfaces"),
                     ({"on_failure": "shrug"}, "media.on_failure")):
        try:
            config_from_dict({"media": raw}, "m.toml")
        except ConfigError as exc:
            assert f"m.toml: {key}" in str(exc), exc
        else:
            raise AssertionError(f"{raw} accepted")
