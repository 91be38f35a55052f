// {{name}}: a volcache eviction policy in JavaScript.
//
// Least-recently-used entries go first, ties broken by the lower id (Cinder's rule), skipping
// pinned entries, until the need is covered. Numbers of the WIT's u64 type arrive as BigInt.
import { log } from "volcache:policy/host@{{wit_version}}";

export const plugin = {
  info() {
    return { name: "{{name}}", version: "0.1.0", summary: "evicts least-recently-used entries first" };
  },
  // `params` is an array of [key, value] strings; throw a string to refuse a configuration.
  configure(params) {},
};

export const eviction = {
  victims(need, view) {
    const sizes = need.basis === "provisioned" ? view.sizeGib : view.allocatedBytes;
    const pinned = new Set(view.pinned);
    const rows = [];
    for (let i = 0; i < view.ids.length; i++) if (!pinned.has(view.ids[i])) rows.push(i);
    const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
    rows.sort((a, b) => cmp(view.lastUsedMs[a], view.lastUsedMs[b]) || cmp(view.ids[a], view.ids[b]));
    const chosen = [];
    let freed = 0n;
    for (const i of rows) {
      if (freed >= need.amount && chosen.length >= need.entries) break;
      chosen.push(view.ids[i]);
      freed += sizes[i];
    }
    if (freed < need.amount || chosen.length < need.entries) log("debug", `cannot cover the need: ${chosen.length} entries free ${freed}`);
    return chosen;
  },
};
