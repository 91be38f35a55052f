//! Crash points for the crash-safety tests. When `VOLCACHE_CRASH_AT` names a point, the process
//! kills itself with SIGKILL there, as a power cut or an OOM kill would. Never set it in
//! production; with it unset, a crash point costs one comparison.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

/// The environment variable that arms one crash point.
pub const ENV: &str = "VOLCACHE_CRASH_AT";

/// Every crash point, for tests that walk them all.
pub const POINTS: &[&str] = &[
    "fill:after-intent",
    "fill:after-create",
    "fill:after-write",
    "clone:after-intent",
    "clone:after-clone",
    "evict:after-catalog",
    "direct:after-write",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty())).as_deref()
}

/// Dies here with SIGKILL if this point is armed.
pub fn point(name: &str) {
    if armed() == Some(name) {
        tracing::error!(point = name, "crash point reached: killing the process ({ENV})");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this line is never reached.
        std::process::abort();
    }
}
