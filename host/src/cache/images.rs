//! Image records: register, change, as one service call each. The slow part (probing the
//! source for its format and size) runs outside any transaction; the check-and-write runs
//! inside one, so two registrations of one id cannot both succeed, two changes cannot lose one,
//! and a change racing a delete cannot bring the image back.
#![forbid(unsafe_code)]

use super::{CacheError, CacheService};
use crate::catalog::ImageRecord;
use crate::image::convert::probe;
use crate::image::source::Location;
use crate::image::DiskFormat;
use crate::lab::trace::Op as TraceOp;

/// A registration request (`POST /v1/images`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewImage {
    /// Chosen by the caller (Glance's id), or a new UUID.
    pub id: Option<String>,
    pub name: String,
    pub source: String,
    pub disk_format: DiskFormat,
    pub checksum: Option<String>,
    /// Check the source this often and refill the entry when it changed.
    pub refresh_interval_seconds: Option<u64>,
}

/// A change (`PATCH /v1/images/{id}`); absent fields stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePatch {
    pub name: Option<String>,
    pub source: Option<String>,
    pub checksum: Option<String>,
    /// A new refresh interval; `Some(0)` turns refresh off. Changing only this keeps the
    /// image's `updated_at` (its entry stays fresh).
    pub refresh_interval_seconds: Option<u64>,
}

fn invalid(message: impl Into<String>) -> CacheError {
    CacheError::Invalid(message.into())
}

/// Glance's `checksum`: an md5, 32 hex digits; stored lower-case.
fn checksum(sum: Option<String>) -> Result<Option<String>, CacheError> {
    match sum {
        Some(sum) if sum.len() != 32 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(invalid("checksum: expected 32 hex digits (md5)"))
        }
        sum => Ok(sum.map(|s| s.to_ascii_lowercase())),
    }
}

/// The longest refresh interval accepted (a year); longer is a typo.
const MAX_REFRESH_S: u64 = 366 * 24 * 3600;

fn refresh_interval(seconds: Option<u64>) -> Result<Option<u64>, CacheError> {
    match seconds {
        Some(s) if s > MAX_REFRESH_S => Err(invalid(format!("refresh_interval_seconds: at most {MAX_REFRESH_S}"))),
        other => Ok(other),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl CacheService {
    /// The location to read, if the operator allows it: files under `image_source_dirs`
    /// (resolved), URLs under `image_source_urls`.
    pub(super) fn confine(&self, location: Location) -> Result<Location, crate::image::ImageError> {
        self.config.url_sources.check(&location)?;
        self.config.file_sources.confine(location)
    }

    /// Registers an image after probing its source; `Conflict` if the id is taken.
    pub fn register_image(&self, new: NewImage) -> Result<ImageRecord, CacheError> {
        let location = Location::parse(&new.source).map_err(|e| invalid(format!("source: {e}")))?;
        let checksum = checksum(new.checksum)?;
        let id = new.id.unwrap_or_else(super::new_uuid);
        if !valid_id(&id) {
            return Err(invalid("id: use 1-128 letters, digits, '-' or '_'"));
        }
        let location = self.confine(location).map_err(|source| CacheError::Image { image_id: id.clone(), source })?;
        if self.catalog.read(|r| r.image(&id))?.is_some() {
            return Err(CacheError::Conflict(format!("image {id} already exists")));
        }
        let (_, virtual_size) = probe(&location, Some(new.disk_format), None, &self.config.source_limits)
            .map_err(|source| CacheError::Image { image_id: id.clone(), source })?;
        let refresh = refresh_interval(new.refresh_interval_seconds)?.filter(|s| *s > 0);
        // A watched image needs a version to compare with; a source that has none is refused.
        let source_version = match refresh {
            Some(_) => Some(self.source_version(&id, &new.source)?),
            None => None,
        };
        let stamp = version_stamp(None);
        let image = ImageRecord {
            id,
            name: new.name,
            source: new.source,
            disk_format: new.disk_format,
            checksum,
            virtual_size,
            updated_at: stamp.clone(),
            created_at: stamp,
            refresh_interval_seconds: refresh,
            source_version,
        };
        let put = self.catalog.write(|w| {
            if w.image(&image.id)?.is_some() {
                return Ok(false);
            }
            w.put_image(&image).map(|()| true)
        })?;
        if !put {
            return Err(CacheError::Conflict(format!("image {} already exists", image.id)));
        }
        self.record(TraceOp::Register, &image.id, &image.updated_at, image.virtual_size);
        Ok(image)
    }

    /// Changes an image's metadata and its `updated_at`: its cache entries are then stale.
    pub fn patch_image(&self, id: &str, patch: ImagePatch) -> Result<ImageRecord, CacheError> {
        let checksum = checksum(patch.checksum)?;
        let refresh = refresh_interval(patch.refresh_interval_seconds)?;
        let changes_image = patch.name.is_some() || patch.source.is_some() || checksum.is_some();
        let current = self.catalog.read(|r| r.image(id))?.ok_or_else(|| CacheError::ImageNotFound(id.into()))?;
        // The version to watch from now on: read when refresh starts or the source changes.
        let watched = match refresh {
            Some(0) => false,
            Some(_) => true,
            None => current.refresh_interval_seconds.is_some(),
        };
        // (A version already recorded is kept, so a change not yet refreshed is still seen.)
        let version = if watched && (patch.source.is_some() || current.source_version.is_none()) {
            Some(self.source_version(id, patch.source.as_deref().unwrap_or(&current.source))?)
        } else {
            None
        };
        let probed = match &patch.source {
            Some(source) => {
                let location = Location::parse(source).map_err(|e| invalid(format!("source: {e}")))?;
                let location =
                    self.confine(location).map_err(|source| CacheError::Image { image_id: id.to_string(), source })?;
                let (_, size) = probe(&location, Some(current.disk_format), None, &self.config.source_limits)
                    .map_err(|source| CacheError::Image { image_id: id.to_string(), source })?;
                Some((source.clone(), size))
            }
            None => None,
        };
        let updated = self.catalog.write(|w| {
            // Read again inside the transaction: a concurrent change is kept, a delete wins.
            let Some(mut image) = w.image(id)? else { return Ok(None) };
            if let Some((source, size)) = &probed {
                image.source = source.clone();
                image.virtual_size = *size;
            }
            if let Some(name) = &patch.name {
                image.name = name.clone();
            }
            if checksum.is_some() {
                image.checksum = checksum.clone();
            }
            match refresh {
                Some(0) => {
                    image.refresh_interval_seconds = None;
                    image.source_version = None;
                }
                Some(s) => image.refresh_interval_seconds = Some(s),
                None => {}
            }
            if version.is_some() {
                image.source_version = version.clone();
            }
            if changes_image {
                image.updated_at = version_stamp(Some(&image.updated_at));
            }
            w.put_image(&image)?;
            Ok(Some(image))
        })?;
        let image = updated.ok_or_else(|| CacheError::ImageNotFound(id.into()))?;
        if changes_image {
            self.record(TraceOp::Update, &image.id, &image.updated_at, image.virtual_size);
        }
        Ok(image)
    }
}

/// The `updated_at` of a new image version: RFC 3339 with milliseconds, strictly later than every
/// version stamp this process made before and than `previous` (the record's last one, which may
/// come from before a restart or a clock step back). Entries are matched to their image by this
/// stamp, so two versions must never share one: an image deleted and registered again within one
/// millisecond would otherwise let a fill of the old version, committed after the registration,
/// serve the old bytes as the new image.
pub(super) fn version_stamp(previous: Option<&str>) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, UNIX_EPOCH};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let floor = previous
        .and_then(|p| humantime::parse_rfc3339(p).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64 + 1);
    let mut last = LAST_MS.load(Ordering::SeqCst);
    loop {
        let ms = super::now_ms().max(last + 1).max(floor);
        match LAST_MS.compare_exchange_weak(last, ms, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
            Err(now) => last = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::version_stamp;

    #[test]
    fn version_stamps_never_repeat_and_follow_the_previous_one() {
        let stamps: Vec<String> = (0..2000).map(|_| version_stamp(None)).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "stamps must increase strictly");
        // A previous stamp ahead of the clock (written before a clock step back) is passed.
        let ahead_ms = super::super::now_ms() + 50;
        let ahead = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ahead_ms);
        let ahead = humantime::format_rfc3339_millis(ahead).to_string();
        assert!(version_stamp(Some(&ahead)) > ahead);
    }
}
