"""The compiled hot path: the SIP layer, authentication, the registrar and
the proxy core, compiled to C extension modules with mypyc from the same
sources (nothing is written twice; the Python files stay the truth).

``hasip compile build`` compiles :data:`MODULES` in place (next to
their sources, one shared library ``hasip/_hot__mypyc*.so``) and records a
SHA-256 of every source in ``hasip/compiled.json``. At import, :func:`guard`
(called by ``hasip/__init__``) checks that record: when any source changed
since the build, or ``HASIP_PURE_PYTHON=1`` is set, every one of these
modules is loaded from its Python source instead. All or none: compiled
modules call each other directly, so one stale module would drag the old
code of the others along.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The modules a request goes through, from datagram to answer. Modules that
# run once per call set-up or less (config, metrics, logging, cluster) stay
# interpreted.
MODULES = (
    "hasip.util.ids",
    "hasip.cluster.lamport",
    "hasip.telemetry.counters",
    "hasip.util.memo",
    "hasip.sip.errors",
    "hasip.sip.grammar",
    "hasip.sip.uri",
    "hasip.sip.headers",
    "hasip.sip.message",
    "hasip.sip.build",
    "hasip.sip.framing",
    "hasip.sip.transaction",
    "hasip.transport.base",
    "hasip.transport.listeners",
    "hasip.transport.udp",
    "hasip.security.routetoken",
    "hasip.security.guard",
    "hasip.security.authfail",
    "hasip.auth.digest",
    "hasip.auth.users",
    "hasip.auth.authenticator",
    "hasip.location.binding",
    "hasip.location.store",
    "hasip.location.registrar",
    "hasip.proxy.timers",
    "hasip.proxy.nat",
    "hasip.proxy.resolver",
    "hasip.proxy.context",
    "hasip.proxy.uac",
    "hasip.proxy.engine",
    "hasip.proxy.shell",
    "hasip.proxy.routing",
    # rtpengine's answers (a delete's statistics: hundreds of values)
    "hasip.media.bencode",
)
GROUP = "hasip._hot"
# The hasip package (this file is hasip/app/compiled.py).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
MANIFEST = PACKAGE_DIR / "compiled.json"

# What guard() decided, for `hasip_build_info` and the start-up log.
state = {"compiled": False, "reason": "not built"}


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_digests() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in MODULES}


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their ``.py`` even where an extension
    module of the same name sits beside it."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def guard() -> None:
    """Decide between the compiled modules and their sources; see the module
    docstring. Must run before any of :data:`MODULES` is imported."""
    reason = ""
    if os.environ.get("HASIP_PURE_PYTHON") == "1":
        reason = "HASIP_PURE_PYTHON=1"
    elif not MANIFEST.exists():
        reason = "not built"
    else:
        try:
            recorded = json.loads(MANIFEST.read_text())
            current = source_digests()
        except (OSError, ValueError) as exc:
            reason = f"unreadable {MANIFEST.name}: {exc}"
        else:
            if recorded.get("python") != sys.implementation.cache_tag:
                reason = f"built for {recorded.get('python')}"
            else:
                stale = sorted(m for m in MODULES if recorded.get("sources", {}).get(m)
                               != current[m])
                if stale:
                    reason = "sources changed since the build: " + ", ".join(stale)
    if reason:
        state.update(compiled=False, reason=reason)
        if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFinder(frozenset(MODULES)))
    else:
        state.update(compiled=True, reason="")


def build(verbose: bool = False) -> int:
    """Compile :data:`MODULES` in place and record their digests."""
    import tempfile

    from mypyc.build import mypycify
    from setuptools import setup

    root = PACKAGE_DIR.parent
    paths = [str(source_path(m).relative_to(root)) for m in MODULES]
    digests = source_digests()
    MANIFEST.unlink(missing_ok=True)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        with tempfile.TemporaryDirectory(prefix="hasip-mypyc-") as tmp:
            print(f"[compile] mypyc: {len(paths)} modules -> {GROUP}__mypyc", flush=True)
            extensions = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=tmp,
                                  verbose=verbose)
            args = ["build_ext", "--inplace", "--build-temp", tmp]
            if not verbose:
                args.insert(0, "--quiet")
            with warnings.catch_warnings():
                # setuptools reads the project's pyproject.toml on the way and
                # warns that [tool.setuptools] is beta: not ours to act on.
                warnings.simplefilter("ignore")
                setup(name="hasip-hot", script_args=args, ext_modules=extensions)
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(json.dumps({"python": sys.implementation.cache_tag,
                                    "sources": digests}, indent=1) + "\n")
    print(f"[compile] done: {MANIFEST}", flush=True)
    return 0


def clean() -> int:
    """Remove the compiled modules: back to the sources alone."""
    MANIFEST.unlink(missing_ok=True)
    removed = 0
    for ext in importlib.machinery.EXTENSION_SUFFIXES:
        for module in (*MODULES, GROUP + "__mypyc"):
            path = PACKAGE_DIR.parent.joinpath(*module.split(".")).with_name(
                module.rsplit(".", 1)[-1] + ext)
            if path.exists():
                path.unlink()
                removed += 1
    print(f"[compile] removed {removed} extension modules", flush=True)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build", "clean", "status"],
                        help="build in place, remove the compiled modules, or say which runs")
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        return build(args.verbose)
    if args.action == "clean":
        return clean()
    print("compiled" if state["compiled"] else f"interpreted ({state['reason']})")
    return 0

