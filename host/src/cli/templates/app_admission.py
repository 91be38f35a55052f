"""{{name}}: a volcache admission policy in Python.

Admits an image unless it alone is larger than `image_volume_cache_max_size_gb` (Cinder's
max-size rule, in GiB; 0 means no limit). Edit `admit` to decide differently.
"""
from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import plugin
from wit_world.imports import types

MAX_SIZE_GB = 0


class Plugin(exports.Plugin):
    def info(self) -> plugin.PluginInfo:
        return plugin.PluginInfo(name="{{name}}", version="0.1.0", summary="admits images that fit the cache")

    def configure(self, params) -> None:
        global MAX_SIZE_GB
        for key, value in params:
            if key == "image_volume_cache_max_size_gb":
                if not value.isdigit():
                    raise Err(f"image_volume_cache_max_size_gb must be a whole number, not {value!r}")
                MAX_SIZE_GB = int(value)


class Admission(exports.Admission):
    def admit(self, candidate: types.Candidate, view: types.View) -> None:
        if MAX_SIZE_GB and candidate.size_gib > MAX_SIZE_GB:
            raise Err(f"image of {candidate.size_gib} GiB is larger than the cache ({MAX_SIZE_GB} GiB)")
