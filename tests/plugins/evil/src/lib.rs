//! `evil`: a policy for every slot that decides like Cinder until the view holds at least
//! `trigger` entries (default 0: always), and then misbehaves as `mode` says:
//!
//! loop, alloc (1 GiB), panic, recurse (stack overflow), unknown-ids, duplicate-ids, pinned-ids,
//! too-few, huge (4 Mi ids), log-flood (100,000 log lines, then a valid answer), last-hit (evict
//! the entry named by the last `on-hit` event: proves events arrive), hook-panic (panic in every
//! event hook), hook-loop (loop for ever in every event hook), ignore-amount (evict the oldest
//! unpinned entry whatever the need), plain-panics (`eviction.victims` panics while
//! `packed-eviction.victims` answers: proves the host asks the packed interface when a component
//! exports both). `configure=fail|loop` misbehaves while being configured.
//! `expiry.expire` (WIT 0.1.1) names nothing, except in its own modes: expire-loop (loop for
//! ever), expire-pinned (the pinned entries), expire-unknown (an id not in the view).
//!
//! The trigger lets a misbehaving plugin pass the host's smoke test (3 entries) and fail later,
//! on real decisions, which is where the host's fallback must hold.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../../wit", world: "any-policy" });

use exports::volcache::policy::{admission, capacity, events, eviction, expiry, packed_eviction, plugin};
use volcache::policy::host::{log, Level};
use volcache::policy::types::{Candidate, Entry, Need, PackedView, SizeBasis, View};

const MODES: [&str; 19] = [
    "none",
    "loop",
    "alloc",
    "panic",
    "recurse",
    "unknown-ids",
    "duplicate-ids",
    "pinned-ids",
    "too-few",
    "huge",
    "log-flood",
    "last-hit",
    "hook-panic",
    "hook-loop",
    "ignore-amount",
    "expire-loop",
    "expire-pinned",
    "expire-unknown",
    "plain-panics",
];

static MODE: AtomicU8 = AtomicU8::new(0);
static TRIGGER: AtomicU64 = AtomicU64::new(0);
static LAST_HIT: AtomicU64 = AtomicU64::new(u64::MAX);
static LIMITS: cinder::AtomicLimits = cinder::AtomicLimits::new();

fn mode() -> &'static str {
    MODES[usize::from(MODE.load(Ordering::Relaxed))]
}

fn columns(view: &View) -> cinder::Columns<'_> {
    cinder::columns!(view)
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = black_box([n; 64]);
    if black_box(true) {
        recurse(n + 1) + pad[3]
    } else {
        0
    }
}

/// The misbehaviours every slot shares; returns normally for id-level modes.
fn misbehave(view: &View) {
    if (view.ids.len() as u64) < TRIGGER.load(Ordering::Relaxed) {
        return;
    }
    match mode() {
        "loop" => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut big: Vec<u8> = Vec::with_capacity(1 << 30);
            big.resize(1 << 30, 1);
            black_box(&big);
        }
        "panic" => panic!("evil plugin panics"),
        "recurse" => {
            black_box(recurse(0));
        }
        "log-flood" => {
            for i in 0..100_000u32 {
                log(Level::Info, &format!("flood line {i}"));
            }
        }
        _ => {}
    }
}

fn triggered(view: &View) -> bool {
    (view.ids.len() as u64) >= TRIGGER.load(Ordering::Relaxed)
}

struct Evil;

impl plugin::Guest for Evil {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "evil".to_string(),
            version: "0.0.1".to_string(),
            summary: format!("misbehaves: {}", mode()),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let limits = cinder::CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("{e}"))?;
        LIMITS.store(limits);
        for (k, v) in &params {
            match k.as_str() {
                "mode" => {
                    let i = MODES.iter().position(|m| m == v).ok_or_else(|| format!("unknown mode {v:?}"))?;
                    MODE.store(i as u8, Ordering::Relaxed);
                }
                "trigger" => {
                    TRIGGER.store(v.parse().map_err(|_| "trigger: not a number".to_string())?, Ordering::Relaxed)
                }
                "configure" if v == "fail" => return Err("evil refuses every configuration".to_string()),
                "configure" if v == "loop" => loop {
                    black_box(0);
                },
                _ => {}
            }
        }
        Ok(())
    }
}

fn size(c: &Candidate) -> cinder::CandidateSize {
    cinder::CandidateSize { size_gib: c.size_gib, allocated_bytes: c.allocated_bytes }
}

impl admission::Guest for Evil {
    fn admit(candidate: Candidate, view: View) -> Result<(), String> {
        misbehave(&view);
        cinder::admit(&LIMITS.load(), size(&candidate)).map_err(|r| format!("{r}"))
    }
}

impl capacity::Guest for Evil {
    fn shortfall(candidate: Candidate, view: View) -> Result<Need, String> {
        misbehave(&view);
        let need = cinder::shortfall(&LIMITS.load(), size(&candidate), &columns(&view)).map_err(|r| format!("{r}"))?;
        let basis = match need.basis {
            cinder::SizeBasis::Provisioned => SizeBasis::Provisioned,
            cinder::SizeBasis::Allocated => SizeBasis::Allocated,
        };
        Ok(Need { amount: need.amount, basis, entries: need.entries })
    }
}

impl eviction::Guest for Evil {
    fn victims(need: Need, view: View) -> Vec<u64> {
        if mode() == "plain-panics" {
            panic!("plain-panics: the host should have asked packed-eviction");
        }
        victims(need, view)
    }
}

// The packed view, unpacked: every mode misbehaves the same through either interface.
impl packed_eviction::Guest for Evil {
    fn victims(need: Need, view: PackedView) -> Vec<u64> {
        let p = cinder::Packed::new(view.rows, &view.columns);
        let column = |k| p.column(k).to_vec();
        let view = View {
            ids: column(cinder::packed::IDS),
            size_gib: column(cinder::packed::SIZE_GIB),
            allocated_bytes: column(cinder::packed::ALLOCATED_BYTES),
            last_used_ms: column(cinder::packed::LAST_USED_MS),
            created_ms: column(cinder::packed::CREATED_MS),
            hits: column(cinder::packed::HITS),
            pinned: p.pinned().to_vec(),
            now_ms: view.now_ms,
        };
        victims(need, view)
    }
}

fn victims(need: Need, view: View) -> Vec<u64> {
    misbehave(&view);
    let basis = match need.basis {
        SizeBasis::Provisioned => cinder::SizeBasis::Provisioned,
        SizeBasis::Allocated => cinder::SizeBasis::Allocated,
    };
    let honest =
        cinder::lru_victims(cinder::Need { amount: need.amount, basis, entries: need.entries }, &columns(&view));
    if !triggered(&view) {
        return honest;
    }
    match mode() {
        "unknown-ids" => vec![u64::MAX - 7],
        "duplicate-ids" => match honest.first() {
            Some(&first) => {
                let mut ids = honest.clone();
                ids.push(first);
                ids
            }
            None => honest,
        },
        "pinned-ids" => view.pinned.clone(),
        "too-few" => Vec::new(),
        "ignore-amount" => {
            let one = cinder::Need { amount: 0, basis: cinder::SizeBasis::Provisioned, entries: 1 };
            cinder::lru_victims(one, &columns(&view))
        }
        "huge" => (1..=(4u64 << 20)).collect(),
        "last-hit" => vec![LAST_HIT.load(Ordering::Relaxed)],
        _ => honest,
    }
}

impl expiry::Guest for Evil {
    fn expire(view: View) -> Vec<u64> {
        if !triggered(&view) {
            return Vec::new();
        }
        match mode() {
            "expire-loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "expire-pinned" => view.pinned.clone(),
            "expire-unknown" => vec![u64::MAX - 7],
            _ => Vec::new(),
        }
    }
}

fn hook_misbehave() {
    match mode() {
        "hook-panic" => panic!("evil hook panics"),
        "hook-loop" => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        _ => {}
    }
}

impl events::Guest for Evil {
    fn on_hit(id: u64, _now_ms: u64) {
        hook_misbehave();
        LAST_HIT.store(id, Ordering::Relaxed);
    }
    fn on_insert(_entry: Entry) {
        hook_misbehave();
    }
    fn on_evict(_id: u64) {
        hook_misbehave();
    }
}

export!(Evil);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
