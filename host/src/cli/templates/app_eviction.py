"""{{name}}: a volcache eviction policy in Python.

Least-recently-used entries go first, ties broken by the lower id (Cinder's rule), skipping
pinned entries, until the need is covered. Edit `victims` to decide differently.
"""
from wit_world import exports
from wit_world.exports import plugin
from wit_world.imports import host, types


class Plugin(exports.Plugin):
    def info(self) -> plugin.PluginInfo:
        return plugin.PluginInfo(name="{{name}}", version="0.1.0", summary="evicts least-recently-used entries first")

    def configure(self, params) -> None:
        # `params` is a list of (key, value) strings; raise componentize_py_types.Err("why")
        # to refuse a configuration.
        return None


class Eviction(exports.Eviction):
    def victims(self, need: types.Need, view: types.View) -> list[int]:
        sizes = view.size_gib if need.basis == types.SizeBasis.PROVISIONED else view.allocated_bytes
        pinned = set(view.pinned)
        order = sorted(
            (view.last_used_ms[i], view.ids[i], i) for i in range(len(view.ids)) if view.ids[i] not in pinned
        )
        chosen, freed = [], 0
        for _, entry_id, i in order:
            if freed >= need.amount and len(chosen) >= need.entries:
                break
            chosen.append(entry_id)
            freed += sizes[i]
        if freed < need.amount or len(chosen) < need.entries:
            host.log(host.Level.DEBUG, f"cannot cover the need: {len(chosen)} entries free {freed}")
        return chosen
