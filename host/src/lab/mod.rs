//! The policy lab: workload traces ([`trace`]), synthetic ones ([`synth`]), and replaying them
//! through policy sets ([`sim`]) next to the offline Belady reference ([`belady`]).
//!
//! It sits beside the cache service, not under it: it drives the same [`crate::policy`] code the
//! daemon uses, on a simulated cache with no backend and no catalog.

pub mod belady;
pub mod plot;
pub mod record;
pub mod shadow;
pub mod sim;
pub mod synth;
pub mod trace;
