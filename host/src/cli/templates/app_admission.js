// {{name}}: a volcache admission policy in JavaScript.
//
// Admits an image unless it alone is larger than `image_volume_cache_max_size_gb` (Cinder's
// max-size rule, in GiB; 0 means no limit). Throw a string to refuse with that reason.
let maxSizeGb = 0n;

export const plugin = {
  info() {
    return { name: "{{name}}", version: "0.1.0", summary: "admits images that fit the cache" };
  },
  configure(params) {
    for (const [key, value] of params) {
      if (key === "image_volume_cache_max_size_gb") {
        if (!/^[0-9]+$/.test(value)) throw `image_volume_cache_max_size_gb must be a whole number, not ${value}`;
        maxSizeGb = BigInt(value);
      }
    }
  },
};

export const admission = {
  admit(candidate, view) {
    if (maxSizeGb > 0n && candidate.sizeGib > maxSizeGb) {
      throw `image of ${candidate.sizeGib} GiB is larger than the cache (${maxSizeGb} GiB)`;
    }
  },
};
