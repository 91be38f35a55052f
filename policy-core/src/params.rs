//! Parsing the Cinder options that configure the built-in policies.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{SizeBasis, GIB};

/// Cinder's option: largest cache, in GiB (0 = unlimited).
pub const KEY_MAX_SIZE_GB: &str = "image_volume_cache_max_size_gb";
/// Cinder's option: most entries (0 = unlimited).
pub const KEY_MAX_COUNT: &str = "image_volume_cache_max_count";
/// volcache's option: `provisioned` (default, Cinder's) or `allocated`.
pub const KEY_SIZE_BASIS: &str = "size_basis";

/// The limits of one cache scope, in Cinder's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CinderLimits {
    /// `image_volume_cache_max_size_gb`; 0 = unlimited.
    pub max_size_gb: u64,
    /// `image_volume_cache_max_count`; 0 = unlimited.
    pub max_count: u64,
    pub basis: SizeBasis,
}

/// A parameter the built-in policies could not accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError<'a> {
    NotANumber { key: &'a str, value: &'a str },
    UnknownBasis { value: &'a str },
}

impl fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::NotANumber { key, value } => {
                write!(f, "{key}: expected a whole number >= 0 (0 = unlimited), got {value:?}")
            }
            ParamError::UnknownBasis { value } => {
                write!(f, "{KEY_SIZE_BASIS}: expected \"provisioned\" or \"allocated\", got {value:?}")
            }
        }
    }
}

impl CinderLimits {
    /// Reads the limits from key/value parameters; later keys override earlier ones and unknown
    /// keys are ignored (one parameter list configures every slot).
    pub fn from_params<'a, I>(params: I) -> Result<Self, ParamError<'a>>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut limits = CinderLimits::default();
        for (key, value) in params {
            match key {
                KEY_MAX_SIZE_GB => limits.max_size_gb = number(key, value)?,
                KEY_MAX_COUNT => limits.max_count = number(key, value)?,
                KEY_SIZE_BASIS => {
                    limits.basis = match value.trim() {
                        "provisioned" => SizeBasis::Provisioned,
                        "allocated" => SizeBasis::Allocated,
                        _ => return Err(ParamError::UnknownBasis { value }),
                    }
                }
                _ => {}
            }
        }
        Ok(limits)
    }

    /// The size limit in `basis` units, or `None` when unlimited.
    pub fn size_limit(&self) -> Option<u64> {
        match (self.max_size_gb, self.basis) {
            (0, _) => None,
            (gb, SizeBasis::Provisioned) => Some(gb),
            (gb, SizeBasis::Allocated) => Some(gb.saturating_mul(GIB)),
        }
    }
}

/// A plugin's own whole-number parameter, or the message `configure` answers with.
pub fn whole_number(key: &str, value: &str) -> Result<u64, alloc::string::String> {
    value.trim().parse().map_err(|_| alloc::format!("{key}: {value:?} is not a whole number"))
}

fn number<'a>(key: &'a str, value: &'a str) -> Result<u64, ParamError<'a>> {
    value.trim().parse().map_err(|_| ParamError::NotANumber { key, value })
}

/// [`CinderLimits`] that a plugin configures once and reads on every call, with no `unsafe`
/// static: a component instance is single-threaded, but statics must still be `Sync`.
#[derive(Debug, Default)]
pub struct AtomicLimits {
    max_size_gb: AtomicU64,
    max_count: AtomicU64,
    allocated_basis: AtomicBool,
}

impl AtomicLimits {
    pub const fn new() -> Self {
        Self { max_size_gb: AtomicU64::new(0), max_count: AtomicU64::new(0), allocated_basis: AtomicBool::new(false) }
    }

    pub fn store(&self, limits: CinderLimits) {
        self.max_size_gb.store(limits.max_size_gb, Ordering::Relaxed);
        self.max_count.store(limits.max_count, Ordering::Relaxed);
        self.allocated_basis.store(limits.basis == SizeBasis::Allocated, Ordering::Relaxed);
    }

    pub fn load(&self) -> CinderLimits {
        CinderLimits {
            max_size_gb: self.max_size_gb.load(Ordering::Relaxed),
            max_count: self.max_count.load(Ordering::Relaxed),
            basis: if self.allocated_basis.load(Ordering::Relaxed) {
                SizeBasis::Allocated
            } else {
                SizeBasis::Provisioned
            },
        }
    }
}
