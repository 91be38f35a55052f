"""{{name}}: a volcache capacity policy in Python.

Cinder's quota rule in GiB: after adding the candidate, at most `image_volume_cache_max_size_gb`
GiB and `image_volume_cache_max_count` entries (0 means no limit). Edit `shortfall` to decide
differently.
"""
from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import plugin
from wit_world.imports import types

LIMITS = {"image_volume_cache_max_size_gb": 0, "image_volume_cache_max_count": 0}


class Plugin(exports.Plugin):
    def info(self) -> plugin.PluginInfo:
        return plugin.PluginInfo(name="{{name}}", version="0.1.0", summary="keeps the cache within its size and count")

    def configure(self, params) -> None:
        for key, value in params:
            if key in LIMITS:
                if not value.isdigit():
                    raise Err(f"{key} must be a whole number, not {value!r}")
                LIMITS[key] = int(value)


class Capacity(exports.Capacity):
    def shortfall(self, candidate: types.Candidate, view: types.View) -> types.Need:
        max_size, max_count = LIMITS["image_volume_cache_max_size_gb"], LIMITS["image_volume_cache_max_count"]
        if max_size and candidate.size_gib > max_size:
            raise Err(f"image of {candidate.size_gib} GiB can never fit a cache of {max_size} GiB")
        amount = max(0, sum(view.size_gib) + candidate.size_gib - max_size) if max_size else 0
        entries = max(0, len(view.ids) + 1 - max_count) if max_count else 0
        return types.Need(amount=amount, basis=types.SizeBasis.PROVISIONED, entries=entries)
