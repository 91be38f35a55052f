//! Single-flight: concurrent misses for one image wait for one fill instead of each downloading.
//!
//! The leader holds a [`Leader`] guard: if it is dropped without publishing (the request
//! panicked or returned early), its followers are told the flight was abandoned and one of them
//! becomes the next leader. Followers wait with a deadline and a [`Cancel`] token, so a client
//! that goes away frees its thread within [`POLL`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often a waiting follower looks at its cancel token.
pub const POLL: Duration = Duration::from_millis(100);

/// What kind of failure a fill met, as its followers must report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The image itself: unreachable, corrupt, wrong checksum. Retrying will not help.
    Source,
    /// The backend or the state directory ran out of space.
    NoSpace,
    /// The backend or the catalog failed; retrying later may help.
    Unavailable,
    /// The image was deleted while it was being filled.
    ImageGone,
}

/// A fill's failure, as safe to show to every waiting client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
}

/// How a fill ended, as its followers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The image is now cache entry `id`.
    Entry(u64),
    /// The image was not cached (policy, quota); followers write their volumes directly.
    NotCached(String),
    /// The fill failed.
    Failed(Failure),
    /// The leader went away without an answer; followers try again (one of them leads).
    Abandoned,
}

/// Why a follower stopped waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    TimedOut,
    Cancelled,
}

/// Set when the client of a request has gone away.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A guard that cancels when dropped unless [`CancelOnDrop::disarm`]ed: an HTTP handler
    /// holds it, and the server drops the handler when its client disconnects.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop { cancel: Some(self.clone()) }
    }
}

#[derive(Debug)]
pub struct CancelOnDrop {
    cancel: Option<Cancel>,
}

impl CancelOnDrop {
    pub fn disarm(mut self) {
        self.cancel = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.cancel();
        }
    }
}

#[derive(Debug, Default)]
pub struct Flight {
    result: Mutex<Option<Filled>>,
    done: Condvar,
}

impl Flight {
    /// Waits until the leader publishes, the deadline passes or `cancel` is set.
    pub fn wait(&self, deadline: Instant, cancel: &Cancel) -> Result<Filled, WaitError> {
        let mut result = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = result.as_ref() {
                return Ok(r.clone());
            }
            if cancel.is_cancelled() {
                return Err(WaitError::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            let slice = (deadline - now).min(POLL);
            result = self.done.wait_timeout(result, slice).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Your role in a flight.
#[derive(Debug)]
pub enum Role<'a> {
    /// Fill, then [`Leader::publish`].
    Leader(Leader<'a>),
    /// Someone else is filling; [`Flight::wait`] for them.
    Follower(Arc<Flight>),
}

/// The leader's duty to answer its followers; dropping it unanswered answers
/// [`Filled::Abandoned`].
#[derive(Debug)]
pub struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    flight: Arc<Flight>,
    published: bool,
}

impl Leader<'_> {
    /// Publishes the result and lets the next miss start a new flight.
    pub fn publish(mut self, result: Filled) {
        self.finish(result);
    }

    fn finish(&mut self, result: Filled) {
        self.published = true;
        let mut active = self.flights.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            active.remove(&self.key);
        }
        drop(active);
        *self.flight.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.flight.done.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.published {
            tracing::warn!(key = %self.key.replace('\0', "/"), "a fill was abandoned; its waiters will retry");
            self.finish(Filled::Abandoned);
        }
    }
}

/// Flights in progress, by key (cache scope and image).
#[derive(Debug, Default)]
pub struct Flights {
    active: Mutex<HashMap<String, Arc<Flight>>>,
}

impl Flights {
    pub fn join(&self, key: &str) -> Role<'_> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        match active.get(key) {
            Some(flight) => Role::Follower(flight.clone()),
            None => {
                let flight = Arc::new(Flight::default());
                active.insert(key.to_string(), flight.clone());
                Role::Leader(Leader { flights: self, key: key.to_string(), flight, published: false })
            }
        }
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_leader_dropped_unanswered_releases_the_key_and_tells_its_followers() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else { panic!("first is the leader") };
        let Role::Follower(flight) = flights.join("k") else { panic!("second follows") };
        let waiter = std::thread::spawn(move || flight.wait(far(), &Cancel::new()));
        // A panicking leader unwinds through its guard.
        let _ = std::thread::scope(|s| {
            s.spawn(move || -> () {
                let _l = leader;
                panic!("fill panicked")
            })
            .join()
        });
        assert_eq!(waiter.join().unwrap(), Ok(Filled::Abandoned));
        assert!(matches!(flights.join("k"), Role::Leader(_)), "the key is free for a new leader");
    }

    #[test]
    fn a_follower_stops_waiting_when_cancelled_or_past_its_deadline() {
        let flights = Flights::default();
        let Role::Leader(_leader) = flights.join("k") else { panic!() };
        let Role::Follower(flight) = flights.join("k") else { panic!() };
        let cancel = Cancel::new();
        let guard = cancel.on_drop();
        let f = flight.clone();
        let c = cancel.clone();
        let waiter = std::thread::spawn(move || f.wait(far(), &c));
        drop(guard);
        assert_eq!(waiter.join().unwrap(), Err(WaitError::Cancelled));
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(flight.wait(soon, &Cancel::new()), Err(WaitError::TimedOut));
    }

    #[test]
    fn a_published_result_reaches_every_follower() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else { panic!() };
        let followers: Vec<_> = (0..3)
            .map(|_| match flights.join("k") {
                Role::Follower(f) => std::thread::spawn(move || f.wait(far(), &Cancel::new())),
                Role::Leader(_) => panic!("only one leader"),
            })
            .collect();
        leader.publish(Filled::Entry(7));
        for f in followers {
            assert_eq!(f.join().unwrap(), Ok(Filled::Entry(7)));
        }
        assert!(flights.is_empty());
    }
}
