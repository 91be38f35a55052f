//! Typed reads and writes of the catalog's tables, inside one transaction ([`Reader`],
//! [`Writer`]): records are JSON rows (see [`super::schema`]).
#![forbid(unsafe_code)]

use redb::{ReadableTable, ReadableTableMetadata};

use super::schema::*;
use super::{CatalogError, Reader, Writer};

fn index_key(scope: &str, image_id: &str) -> String {
    format!("{scope}\0{image_id}")
}

fn decode_row<T: for<'de> serde::Deserialize<'de>>(
    table: &'static str,
    key: impl ToString,
    bytes: &[u8],
) -> Result<T, CatalogError> {
    decode(bytes).map_err(|source| CatalogError::Decode { table, key: key.to_string(), source })
}

/// Up to `limit` rows of `table` that `keep` accepts, by ascending key, after `after`.
fn page<'a, K, KR, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
    after: Option<KR>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, CatalogError>
where
    K: redb::Key + 'static,
    KR: std::borrow::Borrow<K::SelfType<'a>> + 'a,
    for<'k> K::SelfType<'k>: ToString,
    T: for<'de> serde::Deserialize<'de>,
{
    use std::ops::Bound;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut page = Vec::new();
    for row in table.range::<KR>((start, Bound::Unbounded))? {
        if page.len() == limit {
            break;
        }
        let (k, v) = row?;
        let record: T = decode_row(name, k.value(), v.value())?;
        if keep(&record) {
            page.push(record);
        }
    }
    Ok(page)
}

/// Reads shared by `Reader` and `Writer`.
macro_rules! reads {
    () => {
        pub fn image(&self, id: &str) -> Result<Option<ImageRecord>, CatalogError> {
            let t = self.txn.open_table(IMAGES)?;
            let row = t.get(id)?.map(|v| decode_row("images", id, v.value())).transpose();
            row
        }

        pub fn images(&self) -> Result<Vec<ImageRecord>, CatalogError> {
            let t = self.txn.open_table(IMAGES)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    decode_row("images", k.value(), v.value())
                })
                .collect()
        }

        pub fn volume(&self, id: &str) -> Result<Option<VolumeRecord>, CatalogError> {
            let t = self.txn.open_table(VOLUMES)?;
            let row = t.get(id)?.map(|v| decode_row("volumes", id, v.value())).transpose();
            row
        }

        pub fn volumes(&self) -> Result<Vec<VolumeRecord>, CatalogError> {
            let t = self.txn.open_table(VOLUMES)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    decode_row("volumes", k.value(), v.value())
                })
                .collect()
        }

        /// Up to `limit` volumes that `keep` accepts, by ascending id, starting after `after`
        /// (which need not exist: a page goes on even if the volume it ended with was deleted).
        pub fn volumes_page(
            &self,
            after: Option<&str>,
            limit: usize,
            keep: impl Fn(&VolumeRecord) -> bool,
        ) -> Result<Vec<VolumeRecord>, CatalogError> {
            page(&self.txn.open_table(VOLUMES)?, "volumes", after, limit, keep)
        }

        /// Up to `limit` images by ascending id, starting after `after` (as [`Self::volumes_page`]).
        pub fn images_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<ImageRecord>, CatalogError> {
            page(&self.txn.open_table(IMAGES)?, "images", after, limit, |_| true)
        }

        pub fn entry(&self, id: u64) -> Result<Option<EntryRecord>, CatalogError> {
            let t = self.txn.open_table(CACHE_ENTRIES)?;
            let row = t.get(id)?.map(|v| decode_row("image_volume_cache_entries", id, v.value())).transpose();
            row
        }

        /// The entry of `image_id` in cache scope `scope`.
        pub fn entry_for(&self, scope: &str, image_id: &str) -> Result<Option<EntryRecord>, CatalogError> {
            let index = self.txn.open_table(CACHE_INDEX)?;
            let id = index.get(index_key(scope, image_id).as_str())?.map(|v| v.value());
            match id {
                Some(id) => self.entry(id),
                None => Ok(None),
            }
        }

        /// Every entry, by id.
        pub fn entries(&self) -> Result<Vec<EntryRecord>, CatalogError> {
            let t = self.txn.open_table(CACHE_ENTRIES)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    decode_row("image_volume_cache_entries", k.value(), v.value())
                })
                .collect()
        }

        /// Up to `limit` entries that `keep` accepts, by ascending id, after entry `after`
        /// (which need not exist any more).
        pub fn entries_page(
            &self,
            after: Option<u64>,
            limit: usize,
            keep: impl Fn(&EntryRecord) -> bool,
        ) -> Result<Vec<EntryRecord>, CatalogError> {
            page(&self.txn.open_table(CACHE_ENTRIES)?, "image_volume_cache_entries", after, limit, keep)
        }

        pub fn intents(&self) -> Result<Vec<IntentRecord>, CatalogError> {
            let t = self.txn.open_table(INTENTS)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    decode_row("intents", k.value(), v.value())
                })
                .collect()
        }

        /// Policy slots chosen at run time, by slot name.
        pub fn policy_choices(&self) -> Result<Vec<(String, PolicyChoice)>, CatalogError> {
            let t = self.txn.open_table(POLICY_SLOTS)?;
            t.iter()?
                .map(|row| {
                    let (k, v) = row?;
                    Ok((k.value().to_string(), decode_row("policy_slots", k.value(), v.value())?))
                })
                .collect()
        }

        /// Rows of the cache index.
        pub fn index_len(&self) -> Result<u64, CatalogError> {
            Ok(self.txn.open_table(CACHE_INDEX)?.len()?)
        }

        /// A number in the `meta` table (e.g. `durable_commits`: commits that waited for the
        /// disk, over the catalog's life).
        pub fn meta(&self, name: &str) -> Result<u64, CatalogError> {
            let t = self.txn.open_table(META)?;
            let value = t.get(name)?.map(|v| v.value()).unwrap_or(0);
            Ok(value)
        }

        pub fn counter(&self, name: &str) -> Result<u64, CatalogError> {
            let t = self.txn.open_table(COUNTERS)?;
            let value = t.get(name)?.map(|v| v.value()).unwrap_or(0);
            Ok(value)
        }
    };
}

impl Reader<'_> {
    reads!();
}

impl Writer<'_> {
    reads!();

    /// The next number of sequence `name` (1, 2, 3, ...; never reused).
    pub fn next_id(&mut self, name: &str) -> Result<u64, CatalogError> {
        let mut meta = self.txn.open_table(META)?;
        let key = format!("next_{name}");
        let next = meta.get(key.as_str())?.map(|v| v.value()).unwrap_or(1);
        meta.insert(key.as_str(), next + 1)?;
        Ok(next)
    }

    /// Makes sequence `name` continue after `used` (ids up to `used` exist elsewhere).
    pub fn skip_ids(&mut self, name: &str, used: u64) -> Result<(), CatalogError> {
        let mut meta = self.txn.open_table(META)?;
        let key = format!("next_{name}");
        let next = meta.get(key.as_str())?.map(|v| v.value()).unwrap_or(1);
        if next <= used {
            meta.insert(key.as_str(), used + 1)?;
        }
        Ok(())
    }

    /// Adds to a number in the `meta` table.
    pub fn add_meta(&mut self, name: &str, by: u64) -> Result<u64, CatalogError> {
        let mut meta = self.txn.open_table(META)?;
        let value = meta.get(name)?.map(|v| v.value()).unwrap_or(0).saturating_add(by);
        meta.insert(name, value)?;
        Ok(value)
    }

    pub fn put_image(&mut self, image: &ImageRecord) -> Result<(), CatalogError> {
        self.touched_images = true;
        self.txn.open_table(IMAGES)?.insert(image.id.as_str(), encode(image).as_slice())?;
        Ok(())
    }

    pub fn delete_image(&mut self, id: &str) -> Result<bool, CatalogError> {
        self.touched_images = true;
        Ok(self.txn.open_table(IMAGES)?.remove(id)?.is_some())
    }

    pub fn put_volume(&mut self, volume: &VolumeRecord) -> Result<(), CatalogError> {
        self.txn.open_table(VOLUMES)?.insert(volume.id.as_str(), encode(volume).as_slice())?;
        Ok(())
    }

    pub fn delete_volume(&mut self, id: &str) -> Result<bool, CatalogError> {
        Ok(self.txn.open_table(VOLUMES)?.remove(id)?.is_some())
    }

    /// Inserts or replaces an entry and indexes it under its scope and image.
    pub fn put_entry(&mut self, scope: &str, entry: &EntryRecord) -> Result<(), CatalogError> {
        self.txn.open_table(CACHE_ENTRIES)?.insert(entry.id, encode(entry).as_slice())?;
        self.txn.open_table(CACHE_INDEX)?.insert(index_key(scope, &entry.image_id).as_str(), entry.id)?;
        Ok(())
    }

    pub fn delete_entry(&mut self, scope: &str, id: u64) -> Result<Option<EntryRecord>, CatalogError> {
        let Some(entry) = self.entry(id)? else { return Ok(None) };
        self.txn.open_table(CACHE_ENTRIES)?.remove(id)?;
        let mut index = self.txn.open_table(CACHE_INDEX)?;
        let key = index_key(scope, &entry.image_id);
        if index.get(key.as_str())?.map(|v| v.value()) == Some(id) {
            index.remove(key.as_str())?;
        }
        Ok(Some(entry))
    }

    /// Records that a multi-step change starts; returns its id.
    pub fn begin(&mut self, intent: Intent, now_ms: u64) -> Result<u64, CatalogError> {
        let id = self.next_id("intent")?;
        let record = IntentRecord { id, started_ms: now_ms, intent };
        self.txn.open_table(INTENTS)?.insert(id, encode(&record).as_slice())?;
        Ok(id)
    }

    pub fn end(&mut self, intent_id: u64) -> Result<(), CatalogError> {
        self.txn.open_table(INTENTS)?.remove(intent_id)?;
        Ok(())
    }

    pub fn put_policy_choice(&mut self, slot: &str, choice: &PolicyChoice) -> Result<(), CatalogError> {
        self.txn.open_table(POLICY_SLOTS)?.insert(slot, encode(choice).as_slice())?;
        Ok(())
    }

    pub fn add(&mut self, counter: &str, by: u64) -> Result<u64, CatalogError> {
        let mut t = self.txn.open_table(COUNTERS)?;
        let value = t.get(counter)?.map(|v| v.value()).unwrap_or(0).saturating_add(by);
        t.insert(counter, value)?;
        Ok(value)
    }
}
