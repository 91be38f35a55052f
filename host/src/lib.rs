//! volcache: a host daemon that makes creating volumes from VM images fast and cheap.
//!
//! The modules, in the one direction data flows through them (docs/ARCHITECTURE.md has the
//! flows, the entry state machine and the crash model):
//!
//! ```text
//! main -> cli ----------------------------> daemon (composition root) -> server (HTTP: routes,
//!          |                                                            auth, errors, SSE)
//!          +-> lab (traces, simulator)                                     |
//!               |                            cache (the service: create, fill, evict, images,
//!               |                                   reservations, leases, intents, reconcile)
//!               |                              |            |            |
//!               +--------------------------> policy       catalog      backend (file, rbd,
//!                                           (wasm)       (redb)       memory, faulty)
//!                                                           \            |
//!                                              image (sources, formats) -> sparse -> sys
//! ```
//!
//! - [`sys`]: the only syscall wrappers with `unsafe` (SEEK_DATA/HOLE, FICLONE, fallocate).
//! - [`sparse`]: extents, zero detection, thin writing.
//! - [`image`]: sources (file, HTTP(S), Glance v2), formats (raw, qcow2), conversion.
//! - [`backend`]: where volumes live and how they are cloned.
//! - [`catalog`]: every record in one redb file; each call one transaction, flushed to the disk
//!   by a group commit shared with concurrent writers.
//! - [`policy`]: sandboxed wasm policies and their native twins.
//! - [`cache`]: the image-volume cache service; the only place that changes volumes and entries.
//! - [`lab`]: the policy lab: traces, synthetic workloads, replaying them through [`policy`].
//! - [`server`]: the HTTP API, a translation layer over [`cache`] and [`policy`].
//! - [`daemon`]: assembles the parts from a [`config::Config`] and serves.
//! - [`cli`]: the command line, including the HTTP client commands.
//! - [`fault`]: crash points for the crash-safety tests.
//! - [`notify`]: systemd readiness (`Type=notify`).
#![deny(unsafe_code)]

pub mod backend;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fault;
pub mod image;
pub mod lab;
pub mod notify;
pub mod policy;
pub mod server;
pub mod sparse;
pub mod sys;
