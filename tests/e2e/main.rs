//! End-to-end tests: one binary, one module per area. They use the real parts: wasm components
//! built from plugins/ and tests/plugins/ by `make plugins test-plugins`, the real `volcache`
//! binary, and real HTTP on 127.0.0.1.
//!
//! - `api`: the HTTP layer through `app()` with `oneshot`: error classes, racing image records.
//! - `console`: the web console (`/ui`) driven in headless chromium through chromedriver.
//! - `components`: the built plugins are components; `plugin inspect` and `plugin check`.
//! - `cinder`: the wasm plugins decide exactly as the built-in (Cinder) policies.
//! - `adversarial`: misbehaving plugins are contained and answered with Cinder's decision.
//! - `hostile`: JSON for every error, token checks at start, SIGTERM with clients connected.
//! - `hot_swap`: swapping slots while decisions run; failed swaps keep the old plugin.
//! - `artifact_cache`: precompiled plugins are only reused when this daemon wrote them.
//! - `daemon`: the real daemon over HTTP: health, auth, policy listing and swapping, SIGTERM.
//! - `convert`: `volcache convert` against `qemu-img convert`, byte for byte and by allocation.
//! - `overlap_http`: overlapping requests through the real daemon (clients that leave a wait).
//! - `http_stream`: qcow2 over HTTP converted as it downloads (Range refetches, no spool file).
//! - `http_sources`: HTTP and Glance v2 sources, checksums, short downloads.
//! - `backend`: the backend conformance suite on XFS (reflink), ext4 and tmpfs.
//! - `cache_service`: Cinder's cache semantics through the service, on real parts.
//! - `cache_core`: the cache core when requests overlap and fail (in-memory and faulty backends):
//!   regression tests named after each defect, and the concurrent model test.
//! - `cache_model`: random operation sequences checked against a model.
//! - `catalog_faults`: a full state directory, a damaged or missing catalog, quarantine.
//! - `crash`: SIGKILL at every crash point, restart, consistency (file backend on XFS).
//! - `package`: the Debian package installed with dpkg, its unit verified and started.
//! - `warm`: warm-ups (`POST /v1/cache/warm`, `cache warm`) with progress on the event stream.
//! - `refresh`: images refreshed from a changing HTTP source, swapped in without a miss window.
//! - `rbd` (feature `rbd`): the RBD backend and the daemon on a real Ceph cluster, including
//!   the crash suite.

mod fixtures;

mod adversarial;
mod api;
mod artifact_cache;
mod backend;
mod cache_concurrent;
mod cache_core;
mod cache_model;
mod cache_service;
mod catalog_faults;
mod cinder;
mod components;
mod console;
mod convert;
mod crash;
mod daemon;
mod dashboards;
mod expiry;
mod hostile;
mod hot_swap;
mod http_sources;
mod http_stream;
mod lab;
mod overlap_http;
mod package;
mod polyglot;
#[cfg(feature = "rbd")]
mod rbd;
mod refresh;
mod warm;
