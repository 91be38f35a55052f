//! volcache: a host daemon that makes creating volumes from VM images fast and cheap.
//!
//! Modules, in the order data flows through them (see `../shared/DESIGN.md` in the team's
//! notes, and README.md): [`policy`] decides what is cached and evicted, in sandboxed wasm
//! components; [`cli`] and [`server`] are the command line and the HTTP daemon on top.
#![deny(unsafe_code)]

pub mod backend;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod fault;
pub mod image;
pub mod policy;
pub mod server;
pub mod sparse;
pub mod sys;
