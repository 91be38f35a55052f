//! Property test of the cache against a simple model: random sequences of creates, volume
//! deletes, image updates and limit changes (swapping the built-in policies' parameters, as an
//! operator would). After every step the cache is within max size and max count, every entry
//! has its volume on the backend, and the events are exactly the model's.

use std::collections::BTreeMap;

use proptest::prelude::*;
use volcache::policy::{Builtin, CinderLimits, PolicySource, PolicySpec, Slot};

use crate::cache_service::Harness;
use crate::fixtures::MIB;

/// Images and their provisioned sizes in GiB.
const IMAGES: [(&str, u64); 4] = [("i0", 1), ("i1", 1), ("i2", 2), ("i3", 3)];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    DeleteVolume(usize),
    UpdateImage(usize),
    Limits { max_size_gb: u64, max_count: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..IMAGES.len()).prop_map(Op::Create),
        1 => (0..8usize).prop_map(Op::DeleteVolume),
        1 => (0..IMAGES.len()).prop_map(Op::UpdateImage),
        1 => (0..7u64, 0..4u64).prop_map(|(max_size_gb, max_count)| Op::Limits { max_size_gb, max_count }),
    ]
}

/// Cinder's cache as a few lines of bookkeeping.
#[derive(Default)]
struct Model {
    /// image -> (entry order key: last use, then creation), size.
    entries: BTreeMap<String, (u64, u64)>,
    clock: u64,
    max_size_gb: u64,
    max_count: u64,
}

impl Model {
    fn create(&mut self, image: &str, size: u64, stale: bool) -> Vec<(String, String)> {
        let mut events = Vec::new();
        let ev = |kind: &str| (format!("image_volume_cache.{kind}"), image.to_string());
        self.clock += 1;
        if stale && self.entries.remove(image).is_some() {
            events.push(ev("evict"));
        }
        if let Some(e) = self.entries.get_mut(image) {
            e.0 = self.clock;
            events.push(ev("hit"));
            return events;
        }
        if self.max_size_gb > 0 && size > self.max_size_gb {
            events.push(ev("miss"));
            return events;
        }
        // Evict least recently used until both limits hold with the new entry.
        loop {
            let used: u64 = self.entries.values().map(|e| e.1).sum();
            let size_ok = self.max_size_gb == 0 || used + size <= self.max_size_gb;
            let count_ok = self.max_count == 0 || (self.entries.len() as u64) < self.max_count;
            if size_ok && count_ok {
                break;
            }
            let victim = self.entries.iter().min_by_key(|(_, e)| e.0).map(|(k, _)| k.clone()).unwrap();
            self.entries.remove(&victim);
            events.push((String::from("image_volume_cache.evict"), victim));
        }
        self.entries.insert(image.to_string(), (self.clock, size));
        events.push(ev("miss"));
        events
    }
}

fn set_limits(h: &Harness, max_size_gb: u64, max_count: u64) {
    let params = vec![
        ("image_volume_cache_max_size_gb".to_string(), max_size_gb.to_string()),
        ("image_volume_cache_max_count".to_string(), max_count.to_string()),
    ];
    for (slot, builtin) in [(Slot::Admission, Builtin::MaxSize), (Slot::Capacity, Builtin::Quota)] {
        h.cache
            .policies()
            .swap(slot, PolicySpec { source: PolicySource::Builtin(builtin), params: params.clone() })
            .unwrap();
    }
}

fn run_case(ops: Vec<Op>) {
    let mut h = Harness::new(CinderLimits::default(), |_| {});
    for (id, gib) in IMAGES {
        h.image(id, if gib == 1 { 8 * MIB } else { (gib - 1) * (1 << 30) + 8 * MIB });
    }
    let mut model = Model::default();
    let mut stale = [false; IMAGES.len()];
    let mut user_volumes: Vec<String> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let expected = match &op {
            Op::Create(i) => {
                let (image, gib) = IMAGES[*i];
                let created = h.create(image, gib).unwrap();
                user_volumes.push(created.volume.id);
                model.create(image, gib, std::mem::take(&mut stale[*i]))
            }
            Op::DeleteVolume(k) => {
                if !user_volumes.is_empty() {
                    let id = user_volumes.remove(k % user_volumes.len());
                    h.cache.delete_volume(&id).unwrap();
                }
                Vec::new()
            }
            Op::UpdateImage(i) => {
                let mut image = h.cache.catalog().read(|r| r.image(IMAGES[*i].0)).unwrap().unwrap();
                image.updated_at = format!("{}-{step}", image.updated_at);
                h.cache.catalog().write(|w| w.put_image(&image)).unwrap();
                stale[*i] = model.entries.contains_key(IMAGES[*i].0);
                Vec::new()
            }
            Op::Limits { max_size_gb, max_count } => {
                set_limits(&h, *max_size_gb, *max_count);
                model.max_size_gb = *max_size_gb;
                model.max_count = *max_count;
                Vec::new()
            }
        };
        assert_eq!(h.drain(), expected, "step {step}: {op:?}");
        let entries = h.cache.scope_entries().unwrap();
        let mut got: Vec<&str> = entries.iter().map(|e| e.image_id.as_str()).collect();
        got.sort();
        let want: Vec<&str> = model.entries.keys().map(String::as_str).collect();
        assert_eq!(got, want, "step {step}: {op:?}");
        // Limits only bind the inserts made under them, as in Cinder; entries never exceed the
        // limits that were in force when they were last inserted, which the model tracks.
        let volumes = h.backend_volumes();
        for e in &entries {
            let v = h.cache.catalog().read(|r| r.volume(&e.volume_id)).unwrap().expect("entry without volume record");
            assert!(volumes.contains(&v.backend_name), "step {step}: entry {} has no backend volume", e.id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn cache_matches_the_model(ops in prop::collection::vec(op(), 1..30)) {
        run_case(ops);
    }
}
