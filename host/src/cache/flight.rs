//! Single-flight: concurrent misses for one image wait for one fill instead of each downloading.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// How a fill ended, as its followers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The image is now cache entry `id`.
    Entry(u64),
    /// The image was not cached (policy, quota); followers write their volumes directly.
    NotCached(String),
    /// The fill failed; followers fail with the same message.
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Flight {
    result: Mutex<Option<Filled>>,
    done: Condvar,
}

impl Flight {
    /// Blocks until the leader finishes.
    pub fn wait(&self) -> Filled {
        let mut result = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = result.as_ref() {
                return r.clone();
            }
            result = self.done.wait(result).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Your role in a flight.
#[derive(Debug)]
pub enum Role {
    /// Fill, then call [`Flights::finish`].
    Leader(Arc<Flight>),
    /// Someone else is filling; [`Flight::wait`] for them.
    Follower(Arc<Flight>),
}

/// Flights in progress, by key (cache scope and image).
#[derive(Debug, Default)]
pub struct Flights {
    active: Mutex<HashMap<String, Arc<Flight>>>,
}

impl Flights {
    pub fn join(&self, key: &str) -> Role {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        match active.get(key) {
            Some(flight) => Role::Follower(flight.clone()),
            None => {
                let flight = Arc::new(Flight::default());
                active.insert(key.to_string(), flight.clone());
                Role::Leader(flight)
            }
        }
    }

    /// Publishes the leader's result and lets the next miss start a new flight.
    pub fn finish(&self, key: &str, flight: &Flight, result: Filled) {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        *flight.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        flight.done.notify_all();
    }
}
