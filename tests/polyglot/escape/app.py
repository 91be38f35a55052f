"""escape: an LRU eviction policy in Python that also tries to leave its sandbox.

Every call tries to read /etc/passwd, list /, read the environment and arguments, read stdin,
connect to a TCP port on 127.0.0.1 (param `port`: the test listens there), look up a name,
and sleep for a minute. `configure` with the param `report=1` answers the outcome of each
attempt as its error, so a test can read them. A decision is only honest when every attempt
failed; otherwise it names an entry that does not exist, which the host rejects. With
`mode=exit` a decision over 10 entries or more calls sys.exit(3) (the smoke test has fewer).
"""
import os
import socket
import sys
import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import plugin
from wit_world.imports import types

PARAMS = {}


def attempt(name, fn):
    try:
        value = fn()
    except BaseException as e:  # noqa: BLE001 - every failure is the point
        return f"{name}: refused ({type(e).__name__})", False
    return f"{name}: ESCAPED {value!r}"[:200], True


def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", int(PARAMS.get("port", "22"))))
    return "connected"


def slept():
    start = time.monotonic()
    time.sleep(60)
    return time.monotonic() - start


def escapes():
    results = [
        attempt("passwd", lambda: open("/etc/passwd").read(64)),
        attempt("listdir", lambda: os.listdir("/")),
        attempt("connect", connect),
        attempt("lookup", lambda: socket.getaddrinfo("localhost", 80)),
    ]
    env = dict(os.environ)
    results.append((f"environ: {len(env)} variables", bool(env)))
    results.append((f"argv: {sys.argv!r}", len([a for a in sys.argv if a]) > 0))
    data = sys.stdin.read() if sys.stdin else ""
    results.append((f"stdin: {len(data)} bytes", bool(data)))
    results.append((f"sleep(60) took {slept():.3f} s", False))
    results.append((f"time.time() = {time.time()}", False))
    return results


class Plugin(exports.Plugin):
    def info(self) -> plugin.PluginInfo:
        return plugin.PluginInfo(name="escape", version="0.1.0", summary="tries to escape; decides like LRU")

    def configure(self, params) -> None:
        PARAMS.update(dict(params))
        if PARAMS.get("report") == "1":
            raise Err("; ".join(text for text, _ in escapes()))


class Eviction(exports.Eviction):
    def victims(self, need: types.Need, view: types.View) -> list[int]:
        if PARAMS.get("mode") == "exit" and len(view.ids) >= 10:
            sys.exit(3)
        if any(escaped for _, escaped in escapes()):
            return [2**64 - 1]
        sizes = view.size_gib if need.basis == types.SizeBasis.PROVISIONED else view.allocated_bytes
        pinned = set(view.pinned)
        order = sorted((view.last_used_ms[i], view.ids[i], i) for i in range(len(view.ids)) if view.ids[i] not in pinned)
        chosen, freed = [], 0
        for _, entry_id, i in order:
            if freed >= need.amount and len(chosen) >= need.entries:
                break
            chosen.append(entry_id)
            freed += sizes[i]
        return chosen
