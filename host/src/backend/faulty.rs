//! A fault-injecting wrapper around any backend, for tests: it fails a chosen operation on
//! chosen volumes (all of them, or after a countdown), or fails operations at random from a
//! seed, with the error a real backend gives (EIO, ENOSPC). Writes through an opened volume are
//! operations too (`Op::Write`), so a disk that fills half way through a fill can be tried.
#![forbid(unsafe_code)]

use std::io;
use std::sync::{Arc, Mutex};

use super::{Backend, BackendError, CloneMode, Held};
use crate::sparse::BlockDevice;

/// A backend operation that can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Open,
    Write,
    Seal,
    Clone,
    Resize,
    Remove,
}

impl Op {
    pub const ALL: [Op; 7] = [Op::Create, Op::Open, Op::Write, Op::Seal, Op::Clone, Op::Resize, Op::Remove];
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    /// Only volumes whose name starts with this (e.g. `cache-`); empty for every volume.
    pub prefix: String,
    /// Calls that pass before the fault fires.
    pub after: u32,
    /// Times it fires, then it is spent.
    pub times: u32,
    /// The OS error (`libc::EIO`, `libc::ENOSPC`).
    pub errno: i32,
}

#[derive(Debug, Default)]
struct Plan {
    faults: Vec<Fault>,
    /// Random faults: probability in parts per million, and the generator's state.
    random: Option<(u32, u64)>,
    fired: u64,
    /// Operations that take this long (a slow disk or network).
    delays: Vec<(Op, std::time::Duration)>,
}

impl Plan {
    fn delay(&self, op: Op) -> Option<std::time::Duration> {
        self.delays.iter().find(|(o, _)| *o == op).map(|(_, d)| *d)
    }

    fn check(&mut self, op: Op, name: &str) -> Option<i32> {
        for f in &mut self.faults {
            if f.op != op || !name.starts_with(&f.prefix) || f.times == 0 {
                continue;
            }
            if f.after > 0 {
                f.after -= 1;
                continue;
            }
            f.times -= 1;
            self.fired += 1;
            return Some(f.errno);
        }
        if let Some((ppm, state)) = &mut self.random {
            // xorshift64*: reproducible from the seed.
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            // Removals are retried by reconciliation; fail them too, but rarely.
            let ppm = if op == Op::Remove { *ppm / 4 } else { *ppm };
            if (r % 1_000_000) < u64::from(ppm) {
                self.fired += 1;
                return Some(if r & 1 == 0 { libc::EIO } else { libc::ENOSPC });
            }
        }
        None
    }
}

/// The wrapper.
#[derive(Clone, Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    plan: Arc<Mutex<Plan>>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultyBackend { inner, plan: Arc::default() }
    }

    /// Adds a planned fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Fails every operation with probability `ppm` / 1,000,000, reproducibly from `seed`.
    pub fn random(&self, ppm: u32, seed: u64) {
        self.lock().random = Some((ppm, seed | 1));
    }

    /// Makes every `op` take `delay` first.
    pub fn slow(&self, op: Op, delay: std::time::Duration) {
        self.lock().delays.push((op, delay));
    }

    /// Stops every fault and delay.
    pub fn heal(&self) {
        let mut plan = self.lock();
        plan.faults.clear();
        plan.random = None;
        plan.delays.clear();
    }

    /// Faults fired so far.
    pub fn fired(&self) -> u64 {
        self.lock().fired
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, op: Op, name: &str) -> Result<(), BackendError> {
        let (delay, fault) = {
            let mut plan = self.lock();
            (plan.delay(op), plan.check(op, name))
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match fault {
            Some(errno) => Err(BackendError::Io {
                op: op_name(op),
                name: name.into(),
                source: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Open => "open",
        Op::Write => "write",
        Op::Seal => "seal",
        Op::Clone => "clone",
        Op::Resize => "resize",
        Op::Remove => "remove",
    }
}

/// An opened volume whose writes may fail.
#[derive(Debug)]
struct Device {
    inner: Box<dyn BlockDevice>,
    name: String,
    plan: Arc<Mutex<Plan>>,
}

impl Device {
    fn check(&self) -> io::Result<()> {
        let (delay, fault) = {
            let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
            (plan.delay(Op::Write), plan.check(Op::Write, &self.name))
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match fault {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

impl BlockDevice for Device {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.inner.write_all_at(buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        self.inner.set_len(size)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_all()
    }
}

impl Backend for FaultyBackend {
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError> {
        self.check(Op::Create, name)?;
        self.inner.create(name, size)
    }
    fn open(&self, name: &str) -> Result<Box<dyn BlockDevice>, BackendError> {
        self.check(Op::Open, name)?;
        let inner = self.inner.open(name)?;
        Ok(Box::new(Device { inner, name: name.into(), plan: self.plan.clone() }))
    }
    fn seal(&self, name: &str) -> Result<(), BackendError> {
        self.check(Op::Seal, name)?;
        self.inner.seal(name)
    }
    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError> {
        self.check(Op::Clone, dst)?;
        self.inner.clone_volume(src, dst)
    }
    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError> {
        self.check(Op::Resize, name)?;
        self.inner.resize(name, size)
    }
    fn remove(&self, name: &str) -> Result<(), BackendError> {
        self.check(Op::Remove, name)?;
        self.inner.remove(name)
    }
    fn size(&self, name: &str) -> Result<u64, BackendError> {
        self.inner.size(name)
    }
    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError> {
        self.inner.allocated_bytes(name)
    }
    fn exists(&self, name: &str) -> Result<bool, BackendError> {
        self.inner.exists(name)
    }
    fn list(&self) -> Result<Vec<String>, BackendError> {
        self.inner.list()
    }
    fn claim(&self, owner: &str) -> Result<(), BackendError> {
        self.inner.claim(owner)
    }
    fn held(&self) -> Result<Held, BackendError> {
        self.inner.held()
    }
    fn collect_garbage(&self) -> Result<u64, BackendError> {
        self.inner.collect_garbage()
    }
}
