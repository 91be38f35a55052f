//! The built-in policies: Cinder's semantics from `volcache-policy-core`, run natively. They fill
//! slots when no plugin is configured and decide every request whose plugin failed.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use volcache_policy_core as cinder;

use super::{Candidate, LoadError, Need, Slot, View};

/// A built-in policy by its plugin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    MaxSize,
    Quota,
    Lru,
}

impl Builtin {
    /// The built-in that fills `slot` by default (and decides it when a plugin fails).
    pub fn for_slot(slot: Slot) -> Builtin {
        match slot {
            Slot::Admission => Builtin::MaxSize,
            Slot::Capacity => Builtin::Quota,
            Slot::Eviction => Builtin::Lru,
        }
    }

    pub fn slot(self) -> Slot {
        match self {
            Builtin::MaxSize => Slot::Admission,
            Builtin::Quota => Slot::Capacity,
            Builtin::Lru => Slot::Eviction,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::MaxSize => "max-size",
            Builtin::Quota => "quota",
            Builtin::Lru => "lru",
        }
    }

    pub fn check_slot(self, slot: Slot) -> Result<(), LoadError> {
        if self.slot() == slot {
            Ok(())
        } else {
            Err(LoadError::BuiltinWrongSlot { name: self.name(), slot, fills: self.slot() })
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Builtin {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Self, LoadError> {
        [Builtin::MaxSize, Builtin::Quota, Builtin::Lru]
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| LoadError::UnknownBuiltin(s.to_string()))
    }
}

pub(crate) fn admit(limits: &cinder::CinderLimits, candidate: &Candidate) -> Result<(), String> {
    cinder::admit(limits, candidate.size()).map_err(|r| r.to_string())
}

pub(crate) fn shortfall(limits: &cinder::CinderLimits, candidate: &Candidate, view: &View) -> Result<Need, String> {
    cinder::shortfall(limits, candidate.size(), &view.columns()).map_err(|r| r.to_string())
}

pub(crate) fn victims(need: Need, view: &View) -> Vec<u64> {
    cinder::lru_victims(need, &view.columns())
}
