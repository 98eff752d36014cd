"""The cluster's znodes are readable and writable by its ZooKeeper
credentials only (issue 13, point 6): a real ZooKeeper on loopback and a
cluster node (no VIPs: those need namespaces) that authenticates with
digest credentials and creates every znode with their ACL. A client
without them cannot read the membership, rewrite the dispatcher sets, ask
for a handover or drain a node; the operator's commands and the control
API, with them, still work. A tree created open (before credentials) is
secured by the first node that starts with them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE

from hasip.demo.node import NodeProcess, write_secret
from hasip.demo.zookeeper import ZooKeeper
from keepalive.config import Credentials
from keepalive.zk import auth_args, cluster_acl


def client(zk: ZooKeeper, credentials: Credentials | None = None) -> KazooClient:
    kz = KazooClient(hosts=zk.hosts, timeout=5.0,
                     **(auth_args(credentials) if credentials else {}))
    kz.start(timeout=15)
    return kz


def cluster_node(make_node, zk: ZooKeeper, tmp_path: Path, root: str) -> tuple[
        NodeProcess, Credentials, Path]:
    password_file = tmp_path / "zookeeper.password"
    creds = Credentials("hasip", write_secret(password_file))
    node = make_node(dispatcher={"destinations": ["1 sip:127.0.0.1:5999"]},
                     auth={"secret": "the cluster's shared secret"},
                     cluster={"zookeeper": zk.hosts, "root": root, "zookeeper_user": "hasip",
                              "zookeeper_password_file": str(password_file)})
    return node, creds, password_file


def wait_member(kz: KazooClient, path: str) -> None:
    deadline = time.monotonic() + 10
    while kz.exists(path) is None:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def hasip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hasip", *args], capture_output=True,
                          text=True, timeout=60)


def clean_log(node: NodeProcess) -> str:
    text = node.log()
    assert "level=error" not in text and "Traceback" not in text, text[-3000:]
    return text


def test_without_the_credentials_nothing_can_be_read_or_written(
        make_node, zookeeper: ZooKeeper, tmp_path: Path) -> None:
    root = "/acl-test"
    node, creds, password_file = cluster_node(make_node, zookeeper, tmp_path, root)
    member = f"{root}/nodes/{node.config_path.stem.replace('node-', 'test-')}"
    owner = client(zookeeper, creds)
    stranger = client(zookeeper)
    try:
        wait_member(owner, member)
        assert json.loads(owner.get(member)[0])["node"] == member.rsplit("/", 1)[1]
        for path in (root, f"{root}/nodes", member, f"{root}/dispatcher"):
            assert owner.get_acls(path)[0] == cluster_acl(creds), path
        # a client without the credentials: it may see that znodes exist, no more
        with pytest.raises(NoAuthError):
            stranger.get_children(f"{root}/nodes")
        with pytest.raises(NoAuthError):
            stranger.get(member)
        with pytest.raises(NoAuthError):
            stranger.get(f"{root}/dispatcher")
        with pytest.raises(NoAuthError):
            stranger.set(f"{root}/dispatcher", b'{"format": 1, "destinations": []}')
        with pytest.raises(NoAuthError):
            stranger.create(f"{root}/vips/198.18.0.100/handover", b'{"to": "evil"}',
                            makepath=True)
        with pytest.raises(NoAuthError):
            stranger.create(f"{root}/drain/{member.rsplit('/', 1)[1]}", b"", makepath=True)
        with pytest.raises(NoAuthError):
            stranger.delete(member)
        assert stranger.exists(f"{root}/vips") is None and stranger.exists(f"{root}/drain") is None
        # wrong credentials are no better than none
        wrong = client(zookeeper, Credentials("hasip", "not-the-cluster-password"))
        try:
            with pytest.raises(NoAuthError):
                wrong.get(f"{root}/dispatcher")
        finally:
            wrong.stop()
            wrong.close()
        # the operator's commands with the node's configuration
        res = hasip("status", "-c", str(node.config_path), "--json")
        assert res.returncode == 0, res.stderr
        assert list(json.loads(res.stdout)["nodes"]) == [member.rsplit("/", 1)[1]]
        res = hasip("status", "--zookeeper", zookeeper.hosts, "--root", root,
                    "--zookeeper-user", "hasip", "--zookeeper-password-file",
                    str(password_file))
        assert res.returncode == 0 and member.rsplit("/", 1)[1] in res.stdout, res.stderr
        other = tmp_path / "other.password"
        write_secret(other)
        res = hasip("status", "--zookeeper", zookeeper.hosts, "--root", root,
                    "--zookeeper-user", "hasip", "--zookeeper-password-file", str(other))
        assert res.returncode == 1 and "refused access" in res.stderr
        res = hasip("status", "--zookeeper", zookeeper.hosts, "--root", root)
        assert res.returncode == 2 and "no ZooKeeper credentials" in res.stderr
        # a change through the control API goes through ZooKeeper with them
        res = hasip("dispatcher", "-c", str(node.config_path), "add", "1",
                    "sip:127.0.0.1:5998")
        assert res.returncode == 0, res.stderr
        doc = json.loads(owner.get(f"{root}/dispatcher")[0])
        assert [line.split()[1] for line in doc["destinations"]] == [
            "sip:127.0.0.1:5999", "sip:127.0.0.1:5998"]
        res = hasip("drain", "-c", str(node.config_path), member.rsplit("/", 1)[1])
        assert res.returncode == 0, res.stderr
        assert owner.get_acls(f"{root}/drain")[0] == cluster_acl(creds)
    finally:
        for kz in (owner, stranger):
            kz.stop()
            kz.close()
    log = clean_log(node)
    assert "zookeeper_acl_secured" not in log      # created protected: nothing to secure
    assert creds.password not in log


def test_a_tree_created_open_is_secured_by_the_first_node_with_credentials(
        make_node, zookeeper: ZooKeeper, tmp_path: Path) -> None:
    root = "/upgraded"
    stranger = client(zookeeper)
    try:
        # what a cluster without credentials left behind, open to anyone
        doc = {"format": 1, "states": {}, "destinations": ["1 sip:127.0.0.1:5997"]}
        stranger.create(f"{root}/dispatcher", json.dumps(doc).encode(), makepath=True)
        stranger.create(f"{root}/drain/old-node", b"", makepath=True)
        stranger.create(f"{root}/vips/198.18.0.100/released", b"{}", makepath=True)
        assert stranger.get_acls(root)[0] == OPEN_ACL_UNSAFE
        node, creds, _ = cluster_node(make_node, zookeeper, tmp_path, root)
        # the node adopted the cluster's sets (not its own list), then locked the tree
        res = hasip("dispatcher", "-c", str(node.config_path), "list", "--json")
        assert res.returncode == 0, res.stderr
        assert [d["uri"] for d in json.loads(res.stdout)] == ["sip:127.0.0.1:5997"]
        for path in (f"{root}/dispatcher", f"{root}/drain/old-node",
                     f"{root}/vips/198.18.0.100/released", root):
            with pytest.raises(NoAuthError):
                stranger.get(path)
        owner = client(zookeeper, creds)
        try:
            assert owner.get_acls(f"{root}/vips/198.18.0.100")[0] == cluster_acl(creds)
        finally:
            owner.stop()
            owner.close()
    finally:
        stranger.stop()
        stranger.close()
    log = clean_log(node)
    assert log.count("event=zookeeper_acl_secured") == 1
    assert f"root={root} znodes=7 " in log     # root, dispatcher, drain(+1), vips(+1, +1)
