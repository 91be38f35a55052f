//! `volcache plugin test`: a plugin's answers to given cases compared with what its author
//! expects, and properties checked on random caches, with no daemon. Calls go through the same
//! sandbox and the same answer validation as in the daemon; the smoke test is not required, so a
//! plugin that fails it can still be debugged case by case.
#![forbid(unsafe_code)]

use serde::Deserialize;

use super::checks::check_answer;
use super::plugin::WasmPlugin;
use super::{CallError, Candidate, Entry, LoadError, Need, PolicyEngine, SizeBasis, Slot, View};

/// A cases file: parameters for `configure`, then the cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub view: CaseView,
    /// Eviction: what must be freed.
    pub need: Option<CaseNeed>,
    /// Admission and capacity: the image that would be cached.
    pub candidate: Option<CaseCandidate>,
    pub expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseView {
    #[serde(default)]
    pub now_ms: u64,
    #[serde(default)]
    pub entries: Vec<CaseEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEntry {
    pub id: u64,
    pub size_gib: u64,
    #[serde(default)]
    pub allocated_bytes: Option<u64>,
    #[serde(default)]
    pub last_used_ms: u64,
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub hits: u64,
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseNeed {
    #[serde(default)]
    pub amount: u64,
    #[serde(default = "provisioned")]
    pub basis: Basis,
    #[serde(default)]
    pub entries: u32,
}

fn provisioned() -> Basis {
    Basis::Provisioned
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    Provisioned,
    Allocated,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseCandidate {
    #[serde(default = "default_image")]
    pub image_id: String,
    pub size_gib: u64,
    #[serde(default)]
    pub virtual_size_bytes: Option<u64>,
    #[serde(default)]
    pub allocated_bytes: Option<u64>,
}

fn default_image() -> String {
    "test-image".into()
}

/// What the answer must be; exactly one field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Eviction: these ids, in this order.
    pub victims: Option<Vec<u64>>,
    /// Admission: admitted or not.
    pub admit: Option<bool>,
    /// Capacity: this need.
    pub need: Option<CaseNeed>,
    /// Capacity: refused ("can never fit").
    pub refuse: Option<bool>,
}

impl From<CaseNeed> for Need {
    fn from(n: CaseNeed) -> Need {
        let basis = match n.basis {
            Basis::Provisioned => SizeBasis::Provisioned,
            Basis::Allocated => SizeBasis::Allocated,
        };
        Need { amount: n.amount, basis, entries: n.entries }
    }
}

impl CaseView {
    fn view(&self) -> View {
        let entries = self
            .entries
            .iter()
            .map(|e| Entry {
                id: e.id,
                size_gib: e.size_gib,
                allocated_bytes: e.allocated_bytes.unwrap_or(e.size_gib << 30),
                last_used_ms: e.last_used_ms,
                created_ms: e.created_ms,
                hits: e.hits,
                pinned: e.pinned,
            })
            .collect();
        View::new(entries, self.now_ms)
    }
}

impl CaseCandidate {
    fn candidate(&self) -> Candidate {
        let virtual_size_bytes = self.virtual_size_bytes.unwrap_or(self.size_gib << 30);
        Candidate {
            image_id: self.image_id.clone(),
            size_gib: self.size_gib,
            virtual_size_bytes,
            allocated_bytes: self.allocated_bytes.unwrap_or(virtual_size_bytes),
        }
    }
}

/// Loads a component for one slot with `params`, without the smoke test.
pub fn load(
    engine: &PolicyEngine,
    bytes: &[u8],
    slot: Slot,
    params: Vec<(String, String)>,
) -> Result<WasmPlugin, LoadError> {
    let compiled = engine.compile(bytes)?;
    WasmPlugin::new(engine, &compiled.component, compiled.digest, slot, params)
}

/// Runs one case; `Err` says how the answer differs from the expectation.
pub fn run_case(plugin: &WasmPlugin, slot: Slot, case: &Case) -> Result<(), String> {
    let view = case.view.view();
    let failed = |e: CallError| format!("the call failed: {e}");
    match slot {
        Slot::Eviction => {
            let need: Need = case.need.ok_or("an eviction case needs `need`")?.into();
            let ids = plugin.victims(need.into(), &view).map_err(failed)?;
            if let Some(want) = &case.expect.victims {
                if &ids != want {
                    return Err(format!("victims {ids:?}, expected {want:?}"));
                }
            }
            check_answer(need, &view, &ids).map_err(|e| format!("the host would reject this answer: {e}"))?;
            Ok(())
        }
        Slot::Admission => {
            let candidate = case.candidate.as_ref().ok_or("an admission case needs `candidate`")?.candidate();
            let answer = plugin.admit(&candidate.wire(), view.wire()).map_err(failed)?;
            match case.expect.admit {
                Some(want) if want != answer.is_ok() => {
                    Err(format!("admit answered {answer:?}, expected admit={want}"))
                }
                _ => Ok(()),
            }
        }
        Slot::Capacity => {
            let candidate = case.candidate.as_ref().ok_or("a capacity case needs `candidate`")?.candidate();
            let answer = plugin.shortfall(&candidate.wire(), view.wire()).map_err(failed)?;
            match (&case.expect.need, case.expect.refuse, answer) {
                (_, Some(true), Ok(need)) => Err(format!("answered need {need:?}, expected a refusal")),
                (Some(want), _, Ok(need)) if Need::from(*want) != Need::from(need) => {
                    Err(format!("answered need {:?}, expected {:?}", Need::from(need), Need::from(*want)))
                }
                (Some(_), _, Err(reason)) => Err(format!("refused ({reason}), expected a need")),
                _ => Ok(()),
            }
        }
    }
}

/// A small seeded generator (xorshift64*), so that `--seed` replays a failure exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Checks properties on `rounds` random caches: every call returns, and every eviction answer
/// names distinct, unpinned ids of the cache that cover the need (whenever the need can be
/// covered at all). Returns the first failures found, each with the seed that replays it.
pub fn random_properties(plugin: &WasmPlugin, slot: Slot, rounds: u32, seed: u64) -> Vec<String> {
    let mut failures = Vec::new();
    for round in 0..rounds {
        let case_seed = seed.wrapping_add(u64::from(round)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut rng = Rng(case_seed);
        let n = rng.below(40);
        let now = 1_000_000 + rng.below(1_000_000);
        let entries: Vec<Entry> = (0..n)
            .map(|i| {
                let size_gib = 1 + rng.below(50);
                Entry {
                    id: 1 + i * (1 + rng.below(3)),
                    size_gib,
                    allocated_bytes: rng.below(size_gib << 30),
                    last_used_ms: rng.below(now),
                    created_ms: rng.below(now),
                    hits: rng.below(100),
                    pinned: rng.below(10) == 0,
                }
            })
            .collect();
        let view = View::new(entries, now);
        let outcome = match slot {
            Slot::Eviction => {
                let need = if rng.below(2) == 0 {
                    Need { amount: rng.below(200), basis: SizeBasis::Provisioned, entries: rng.below(3) as u32 }
                } else {
                    Need { amount: rng.below(200 << 30), basis: SizeBasis::Allocated, entries: rng.below(3) as u32 }
                };
                match plugin.victims(need.into(), &view) {
                    Err(e) => Err(format!("need {need:?}: the call failed: {e}")),
                    // Best effort is allowed when nothing covers, but only with real, distinct,
                    // unpinned ids.
                    Ok(ids) => check_answer(need, &view, &ids)
                        .map(drop)
                        .map_err(|e| format!("need {need:?} over {} entries: {e}", view.len())),
                }
            }
            Slot::Admission | Slot::Capacity => {
                let size_gib = 1 + rng.below(80);
                let candidate = Candidate {
                    image_id: format!("random-{round}"),
                    size_gib,
                    virtual_size_bytes: size_gib << 30,
                    allocated_bytes: rng.below(size_gib << 30),
                };
                let wire = candidate.wire();
                let result = if slot == Slot::Admission {
                    plugin.admit(&wire, view.wire()).map(drop)
                } else {
                    plugin.shortfall(&wire, view.wire()).map(drop)
                };
                result.map_err(|e| format!("candidate of {size_gib} GiB: the call failed: {e}"))
            }
        };
        if let Err(e) = outcome {
            failures.push(format!("random case {round} (--seed {seed}): {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    failures
}
