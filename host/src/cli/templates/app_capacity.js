// {{name}}: a volcache capacity policy in JavaScript.
//
// Cinder's quota rule in GiB: after adding the candidate, at most `image_volume_cache_max_size_gb`
// GiB and `image_volume_cache_max_count` entries (0 means no limit).
const limits = { image_volume_cache_max_size_gb: 0n, image_volume_cache_max_count: 0n };

export const plugin = {
  info() {
    return { name: "{{name}}", version: "0.1.0", summary: "keeps the cache within its size and count" };
  },
  configure(params) {
    for (const [key, value] of params) {
      if (key in limits) {
        if (!/^[0-9]+$/.test(value)) throw `${key} must be a whole number, not ${value}`;
        limits[key] = BigInt(value);
      }
    }
  },
};

export const capacity = {
  shortfall(candidate, view) {
    const maxSize = limits.image_volume_cache_max_size_gb;
    const maxCount = limits.image_volume_cache_max_count;
    if (maxSize > 0n && candidate.sizeGib > maxSize) throw `image of ${candidate.sizeGib} GiB can never fit a cache of ${maxSize} GiB`;
    let used = 0n;
    for (const s of view.sizeGib) used += s;
    const over = used + candidate.sizeGib - maxSize;
    const amount = maxSize > 0n && over > 0n ? over : 0n;
    const extra = BigInt(view.ids.length) + 1n - maxCount;
    const entries = maxCount > 0n && extra > 0n ? Number(extra) : 0;
    return { amount, basis: "provisioned", entries };
  },
};
