"""The control API on a network (issue 13, point 6): every request carries
the bearer token of control.token_file, a read-only token may only GET,
POST bodies are JSON only, a foreign Host or Origin is refused, mutual
TLS when asked; refusals are logged and counted, never with the token."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hasip.demo.node import NodeProcess, write_secret
from tests.e2e.conftest import metric

Answer = tuple[int, dict[str, str], dict[str, Any]]


def request(node: NodeProcess, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", tls: ssl.SSLContext | None = None) -> Answer:
    """One HTTP request to the node's control API, headers exactly as given
    (Host defaults to the listen address): status, headers, JSON body."""
    host, _, port = node.control.rpartition(":")
    fields = {"Host": node.control, **(headers or {})}
    if body:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                                                      fields.items() if v is not None)
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
    except BaseException:
        raw.close()
        raise
    with sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_text, _, payload = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    answer_headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), answer_headers, json.loads(payload or b"{}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_json(node: NodeProcess, path: str, args: dict[str, Any], token: str,
              content_type: str = "application/json", **headers: str) -> Answer:
    return request(node, "POST", path, {**bearer(token), "Content-Type": content_type,
                                        **headers}, json.dumps(args).encode())


def listing(node: NodeProcess) -> list[str]:
    status, _, answer = request(node, "GET", "/dispatcher", bearer(node.token))
    assert status == 200, answer
    return [d["uri"] for d in answer["destinations"]]


def clean_log(node: NodeProcess) -> str:
    """The node's log, which must hold no error and no traceback."""
    text = node.log()
    assert "level=error" not in text and "Traceback" not in text, text[-3000:]
    return text


def test_no_token_or_a_wrong_one_is_401_the_right_one_200(make_node) -> None:
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]})
    status, headers, answer = request(node, "GET", "/dispatcher")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="hasip"'
    wrong = request(node, "GET", "/dispatcher", bearer("x" * 32))
    # a wrong token gets the very same answer: nothing says which tokens exist
    assert wrong == (status, headers, answer)
    assert request(node, "GET", "/dispatcher", {"Authorization": node.token})[0] == 401
    assert request(node, "GET", "/location/bindings")[0] == 401
    assert post_json(node, "/dispatcher/add", {"set": 1, "uri": "sip:127.0.0.1:5998"},
                     "y" * 32)[0] == 401
    status, _, answer = request(node, "GET", "/dispatcher", bearer(node.token))
    assert status == 200 and [d["uri"] for d in answer["destinations"]] == [
        "sip:127.0.0.1:5999"]
    status, _, answer = request(node, "GET", "/location/bindings", bearer(node.token))
    assert status == 200 and answer == {"bindings": []}
    text = node.metrics()
    assert metric(text, "hasip_control_requests_total", 'result="unauthorized"') == 5
    assert metric(text, "hasip_control_requests_total", 'result="ok"') == 2
    log = clean_log(node)
    assert log.count("event=control_refused") == 5
    assert 'reason="no token"' in log and 'reason="wrong token"' in log
    assert "peer=127.0.0.1:" in log
    assert node.token not in log and "x" * 32 not in log


def test_a_post_that_is_not_json_is_415_and_changes_nothing(make_node) -> None:
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]})
    add = {"set": 1, "uri": "sip:127.0.0.1:5998"}
    # what a web page can send without asking the browser first
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                 "application/json; charset=latin-1"):
        status, _, answer = post_json(node, "/dispatcher/add", add, node.token, kind)
        assert status == 415, (kind, answer)
    status, _, _ = request(node, "POST", "/dispatcher/add", bearer(node.token),
                           json.dumps(add).encode())
    assert status == 415        # no Content-Type at all
    assert listing(node) == ["sip:127.0.0.1:5999"]
    status, _, answer = post_json(node, "/dispatcher/add", add, node.token,
                                  "application/json; charset=utf-8")
    assert status == 200, answer
    assert listing(node) == ["sip:127.0.0.1:5999", "sip:127.0.0.1:5998"]
    assert metric(node.metrics(), "hasip_control_requests_total",
                  'result="unsupported_media_type"') == 5
    clean_log(node)


def test_a_foreign_origin_or_host_is_refused(make_node) -> None:
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]},
                     control={"hosts": ["hasip-1.example.net"],
                              "origins": ["https://ops.example.net"]})
    port = node.control.rpartition(":")[2]
    disable = {"set": 1, "uri": "sip:127.0.0.1:5999", "state": "disabled"}
    status, headers, _ = post_json(node, "/dispatcher/set-state", disable, node.token,
                                   Origin="https://evil.example")
    assert status == 403
    assert not any(h.startswith("access-control-") for h in headers)   # never CORS
    assert request(node, "GET", "/dispatcher", {**bearer(node.token),
                                                "Origin": "null"})[0] == 403
    # DNS rebinding: the attacker's name in Host, the node's address underneath
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{int(port) + 1}",
                 f"127.0.0.2:{port}"):
        status, _, _ = request(node, "GET", "/dispatcher", {**bearer(node.token),
                                                            "Host": host})
        assert status == 421, host
    assert request(node, "GET", "/dispatcher", {**bearer(node.token), "Host": None})[0] == 400
    assert _flags(node)["sip:127.0.0.1:5999"][0] == "A"      # nothing was disabled
    # the listen address with or without port, localhost, control.hosts, control.origins
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}",
                 f"HASIP-1.example.net:{port}"):
        status, _, _ = request(node, "GET", "/dispatcher", {**bearer(node.token),
                                                            "Host": host})
        assert status == 200, host
    status, headers, _ = post_json(node, "/dispatcher/set-state", disable, node.token,
                                   Origin="https://ops.example.net")
    assert status == 200 and not any(h.startswith("access-control-") for h in headers)
    assert _flags(node)["sip:127.0.0.1:5999"][0] == "D"
    text = node.metrics()
    assert metric(text, "hasip_control_requests_total", 'result="forbidden"') == 2
    assert metric(text, "hasip_control_requests_total", 'result="misdirected"') == 4
    log = clean_log(node)
    assert "Origin 'https://evil.example' is not in control.origins" in log
    assert "Host 'evil.example' is not this node" in log


def _flags(node: NodeProcess) -> dict[str, str]:
    status, _, answer = request(node, "GET", "/dispatcher", bearer(node.token))
    assert status == 200
    return {d["uri"]: d["flags"] for d in answer["destinations"]}


def test_the_read_only_token_may_only_get(make_node, tmp_path: Path) -> None:
    read_file = tmp_path / "read.token"
    read_token = write_secret(read_file)
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]},
                     control={"read_token_file": str(read_file)})
    for path in ("/dispatcher", "/location", "/location/bindings", "/dialogs",
                 "/replication"):
        assert request(node, "GET", path, bearer(read_token))[0] == 200, path
    status, _, answer = post_json(node, "/dispatcher/remove",
                                  {"set": 1, "uri": "sip:127.0.0.1:5999"}, read_token)
    assert status == 403 and "read-only" in answer["error"]
    assert listing(node) == ["sip:127.0.0.1:5999"]
    # the full token still may
    status, _, _ = post_json(node, "/dispatcher/remove", {"set": 1, "uri": "sip:127.0.0.1:5999"},
                             node.token)
    assert status == 200 and listing(node) == []
    log = clean_log(node)
    assert 'reason="read-only token on POST"' in log and read_token not in log


def hasip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasip", *args], capture_output=True,
                          text=True, timeout=30)


def test_the_cli_reads_the_token_file_of_the_config(make_node, tmp_path: Path) -> None:
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]})
    res = hasip("dispatcher", "-c", str(node.config_path), "list")
    assert res.returncode == 0 and "sip:127.0.0.1:5999" in res.stdout, res.stderr
    # --control alone has no token; --token-file gives one
    res = hasip("dispatcher", "--control", node.control, "list")
    assert res.returncode == 2 and "no token" in res.stderr
    other = tmp_path / "other.token"
    write_secret(other)
    res = hasip("dispatcher", "--control", node.control, "--token-file", str(other), "list")
    assert res.returncode == 1 and "refused the request (401)" in res.stderr
    res = hasip("dispatcher", "--control", node.control, "--token-file",
                str(tmp_path / f"control-{node.sip_port}.token"), "add", "1",
                "sip:127.0.0.1:5998")
    assert res.returncode == 0 and "sip:127.0.0.1:5998" in res.stdout, res.stderr
    other.chmod(0o644)
    res = hasip("dispatcher", "--control", node.control, "--token-file", str(other), "list")
    assert res.returncode == 2 and "--token-file:" in res.stderr and "chmod 600" in res.stderr
    clean_log(node)


def _certificates(workdir: Path) -> dict[str, Path]:
    """A CA, the node's certificate (for 127.0.0.1) and an operator's, signed
    by it, and a certificate from another CA (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir)

    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN=hasip {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (workdir / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    for name, ca, ext in (("node", "ca", ["-extfile", "san.ext"]), ("operator", "ca", []),
                          ("rogue", "rogue-ca", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=hasip {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *ext)
    return {name: workdir / name for name in ("ca.pem", "node.pem", "node.key",
                                               "operator.pem", "operator.key", "rogue.pem",
                                               "rogue.key")}


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("openssl is missing")
    return _certificates(tmp_path)


def test_mutual_tls_refuses_a_client_without_a_certificate(make_node, certificates) -> None:
    c = {k: str(v) for k, v in certificates.items()}
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]},
                     control={"tls_cert": c["node.pem"], "tls_key": c["node.key"],
                              "tls_ca": c["ca.pem"]})
    plain = ssl.create_default_context(cafile=c["ca.pem"])
    with pytest.raises((ssl.SSLError, ConnectionError, ValueError)):
        request(node, "GET", "/dispatcher", bearer(node.token), tls=plain)
    rogue = ssl.create_default_context(cafile=c["ca.pem"])
    rogue.load_cert_chain(c["rogue.pem"], c["rogue.key"])
    with pytest.raises((ssl.SSLError, ConnectionError, ValueError)):
        request(node, "GET", "/dispatcher", bearer(node.token), tls=rogue)
    with pytest.raises((ConnectionError, ValueError, IndexError)):
        request(node, "GET", "/dispatcher", bearer(node.token))   # no TLS at all
    operator = ssl.create_default_context(cafile=c["ca.pem"])
    operator.load_cert_chain(c["operator.pem"], c["operator.key"])
    status, _, answer = request(node, "GET", "/dispatcher", bearer(node.token), tls=operator)
    assert status == 200 and answer["destinations"][0]["uri"] == "sip:127.0.0.1:5999"
    # the certificate does not replace the token
    assert request(node, "GET", "/dispatcher", tls=operator)[0] == 401
    # the CLI: the node's configuration names the CA; the operator's certificate
    # from the command line
    cfg = str(node.config_path)
    res = hasip("dispatcher", "-c", cfg, "list")
    assert res.returncode == 1 and "cannot reach" in res.stderr
    res = hasip("dispatcher", "-c", cfg, "--cert", c["operator.pem"], "--key",
                c["operator.key"], "list")
    assert res.returncode == 0 and "sip:127.0.0.1:5999" in res.stdout, res.stderr
    assert metric(node.metrics(), "hasip_control_requests_total", 'result="tls_refused"') >= 3
    log = clean_log(node)
    assert "event=control_refused" in log and "TLS handshake failed" in log


def test_the_cli_takes_the_operator_certificate_from_the_config(make_node,
                                                                certificates) -> None:
    c = {k: str(v) for k, v in certificates.items()}
    node = make_node(control={"tls_cert": c["node.pem"], "tls_key": c["node.key"],
                              "tls_ca": c["ca.pem"], "client_cert": c["operator.pem"],
                              "client_key": c["operator.key"]})
    res = hasip("dispatcher", "-c", str(node.config_path), "list", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []
    clean_log(node)
