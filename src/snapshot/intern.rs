//! Compact string interning: keys become dense `u32` ids.
//!
//! A snapshot holds a million instance keys and a hundred thousand user keys;
//! a `HashMap<String, u32>` would cost a heap allocation and ~50 bytes per
//! key. Here every key lives in one arena string, an entry costs a span
//! (8 bytes), a scope (4 bytes) and a 16-byte slot in a `HashTable`, and a
//! lookup borrows the caller's `&str` without allocating.
//!
//! A *scope* lets one table hold keys that are only unique within a parent,
//! e.g. instance keys within their resource type: `(type_id, "d1")`.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const NONE: u32 = u32::MAX;

#[derive(Default)]
pub struct Interner {
    arena: String,
    spans: Vec<(u32, u32)>,
    scopes: Vec<u32>,
    /// Each slot carries what the comparison needs, so a lookup touches the
    /// table and the key's bytes only: two cache misses, not four.
    table: HashTable<Slot>,
    hasher: DefaultHashBuilder,
    /// Set when a key could not be added because ids or the text's offsets
    /// would pass 32 bits; the build then refuses the document.
    overflowed: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    id: u32,
    scope: u32,
    start: u32,
    len: u32,
}

impl Slot {
    fn key<'a>(&self, arena: &'a str) -> &'a str {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `keys` keys without regrowing the table.
    pub fn with_capacity(keys: usize) -> Self {
        Interner {
            spans: Vec::with_capacity(keys),
            scopes: Vec::with_capacity(keys),
            table: HashTable::with_capacity(keys),
            ..Self::default()
        }
    }

    fn hash(hasher: &DefaultHashBuilder, scope: u32, key: &str) -> u64 {
        let mut h = hasher.build_hasher();
        scope.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    }

    fn slice<'a>(arena: &'a str, spans: &[(u32, u32)], id: u32) -> &'a str {
        let (start, len) = spans[id as usize];
        &arena[start as usize..(start + len) as usize]
    }

    /// The id of `key` in `scope`, adding it if new.
    pub fn intern_in(&mut self, scope: u32, key: &str) -> u32 {
        if let Some(id) = self.get_in(scope, key) {
            return id;
        }
        let fits = (
            u32::try_from(self.spans.len())
                .ok()
                .filter(|&id| id != NONE),
            u32::try_from(self.arena.len()).ok(),
            u32::try_from(self.arena.len() + key.len()).ok(),
        );
        let (Some(id), Some(start), Some(_)) = fits else {
            self.overflowed = true;
            return NONE;
        };
        let len = key.len() as u32;
        self.arena.push_str(key);
        self.spans.push((start, len));
        self.scopes.push(scope);
        let slot = Slot {
            id,
            scope,
            start,
            len,
        };
        let (arena, hasher) = (&self.arena, &self.hasher);
        let hash = Self::hash(hasher, scope, key);
        self.table
            .insert_unique(hash, slot, |s| Self::hash(hasher, s.scope, s.key(arena)));
        id
    }

    pub fn intern(&mut self, key: &str) -> u32 {
        self.intern_in(0, key)
    }

    pub fn get_in(&self, scope: u32, key: &str) -> Option<u32> {
        self.get_hashed(self.hash_in(scope, key), scope, key)
    }

    /// The hash `get_hashed` takes: computing the hashes of many keys first
    /// lets their table probes run back to back.
    pub fn hash_in(&self, scope: u32, key: &str) -> u64 {
        Self::hash(&self.hasher, scope, key)
    }

    /// `get_in`, with `hash` from this interner's `hash_in(scope, key)`.
    pub fn get_hashed(&self, hash: u64, scope: u32, key: &str) -> Option<u32> {
        self.table
            .find(hash, |s| {
                s.scope == scope && s.len as usize == key.len() && s.key(&self.arena) == key
            })
            .map(|s| s.id)
    }

    /// Whether a key was refused for passing 32-bit ids or offsets.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.get_in(0, key)
    }

    pub fn name(&self, id: u32) -> &str {
        Self::slice(&self.arena, &self.spans, id)
    }

    pub fn scope(&self, id: u32) -> u32 {
        self.scopes[id as usize]
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        (0..self.spans.len() as u32).map(move |id| (id, self.name(id)))
    }

    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.spans.shrink_to_fit();
        self.scopes.shrink_to_fit();
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .shrink_to_fit(|s| Self::hash(hasher, s.scope, s.key(arena)));
    }

    /// Frees the table that finds a key's id, keeping the keys: for an
    /// interner that is only read by id from here on (`get` then finds
    /// nothing). The table is over half an interner's memory
    /// (docs/performance.md).
    pub fn drop_lookups(&mut self) {
        self.table = HashTable::new();
    }

    /// Forgets every key from id `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.spans.len() {
            return;
        }
        self.arena.truncate(self.spans[len].0 as usize);
        self.spans.truncate(len);
        self.scopes.truncate(len);
        self.table.retain(|s| (s.id as usize) < len);
    }

    /// Heap bytes held, for the snapshot's memory report.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.spans.capacity() * 8
            + self.scopes.capacity() * 4
            + self.table.capacity() * (std::mem::size_of::<Slot>() + 1)
    }
}

/// Serialized as the list of `(scope, key)` in id order; read back by
/// interning them again, which must give the same ids.
impl Serialize for Interner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.len() as u32).map(|id| (self.scope(id), self.name(id))))
    }
}

impl<'de> Deserialize<'de> for Interner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Interner;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of (scope, key)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Interner, A::Error> {
                // The count is known up front (bincode writes it): sizing
                // the table once saves a rehash at every doubling as it
                // grows. Capped, so a bad count cannot reserve much.
                let keys = seq.size_hint().unwrap_or(0).min(1 << 20);
                let mut interner = Interner::with_capacity(keys);
                while let Some((scope, key)) = seq.next_element::<(u32, Cow<'de, str>)>()? {
                    let expected = interner.len() as u32;
                    if interner.intern_in(scope, &key) != expected {
                        return Err(serde::de::Error::custom(format!(
                            "key {key:?} appears twice"
                        )));
                    }
                }
                Ok(interner)
            }
        }
        d.deserialize_seq(Keys)
    }
}

/// Compressed sparse rows: for each owner id, a sorted slice of items.
/// One allocation for all rows instead of a `Vec` per owner.
pub struct Csr<T> {
    offsets: Vec<u32>,
    items: Vec<T>,
}

impl<T: Copy + Ord> Csr<T> {
    /// `pairs` are `(owner, item)`; `owners` is the number of owners.
    ///
    /// Owners are dense ids, so the items are placed by counting (linear)
    /// and only each row is sorted, instead of sorting all the pairs.
    /// `pairs` is read twice (count, then place) rather than collected: the
    /// builder makes two indexes from one list of facts, each a view of it,
    /// and a re-keyed copy per index is memory a reload need not hold.
    pub fn build<I>(owners: usize, pairs: I) -> Self
    where
        I: IntoIterator<Item = (u32, T)>,
        I::IntoIter: Clone,
    {
        let pairs = pairs.into_iter();
        let mut offsets = vec![0u32; owners + 1];
        for (owner, _) in pairs.clone() {
            offsets[owner as usize + 1] += 1;
        }
        for i in 0..owners {
            offsets[i + 1] += offsets[i];
        }
        let Some((_, fill)) = pairs.clone().next() else {
            return Csr {
                offsets,
                items: Vec::new(),
            };
        };
        let mut items = vec![fill; offsets[owners] as usize];
        let mut next = offsets.clone();
        for (owner, item) in pairs {
            let slot = &mut next[owner as usize];
            items[*slot as usize] = item;
            *slot += 1;
        }
        drop(next);
        // Sort each row and drop its duplicates, compacting in place.
        let mut kept = 0usize;
        for o in 0..owners {
            let (start, end) = (offsets[o] as usize, offsets[o + 1] as usize);
            items[start..end].sort_unstable();
            let row_start = kept;
            for i in start..end {
                if kept == row_start || items[kept - 1] != items[i] {
                    items[kept] = items[i];
                    kept += 1;
                }
            }
            offsets[o] = row_start as u32;
        }
        offsets[owners] = kept as u32;
        items.truncate(kept);
        items.shrink_to_fit();
        Csr { offsets, items }
    }

    pub fn row(&self, owner: u32) -> &[T] {
        let o = owner as usize;
        if o + 1 >= self.offsets.len() {
            return &[];
        }
        &self.items[self.offsets[o] as usize..self.offsets[o + 1] as usize]
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.items.capacity() * std::mem::size_of::<T>()
    }
}

/// A fixed-size bit set over dense ids.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    pub fn with_len(bits: usize) -> Self {
        BitSet(vec![0; bits.div_ceil(64)])
    }

    pub fn insert(&mut self, i: u32) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.0.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn union_with(&mut self, other: &BitSet) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u32)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_scoped() {
        let mut i = Interner::new();
        let a = i.intern("alice");
        let b = i.intern("bob");
        assert_eq!(i.intern("alice"), a);
        assert_ne!(a, b);
        let d1 = i.intern_in(7, "d1");
        let d1b = i.intern_in(8, "d1");
        assert_ne!(d1, d1b);
        assert_eq!(i.get_in(7, "d1"), Some(d1));
        assert_eq!(i.get("d1"), None);
        assert_eq!(i.name(b), "bob");
        for n in 0..10_000 {
            i.intern(&format!("k{n}"));
        }
        i.shrink_to_fit();
        assert_eq!(i.get("k9999").map(|id| i.name(id)), Some("k9999"));
        assert_eq!(i.get("alice"), Some(a));
    }

    #[test]
    fn truncation_and_serde_keep_ids() {
        let mut i = Interner::new();
        let a = i.intern("a");
        let d = i.intern_in(3, "d");
        i.intern("b");
        i.intern("c");
        i.truncate(2);
        assert_eq!(
            (i.len(), i.get("b"), i.get("a"), i.get_in(3, "d")),
            (2, None, Some(a), Some(d))
        );
        assert_eq!(i.intern("c"), 2);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&i, cfg).unwrap();
        let (back, _): (Interner, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            i.iter().collect::<Vec<_>>()
        );
        assert_eq!(back.get_in(3, "d"), Some(d));
        let twice = bincode::serde::encode_to_vec(vec![(0u32, "x"), (0, "x")], cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<Interner, _>(&twice, cfg).is_err());
    }

    #[test]
    fn csr_rows_are_sorted_and_deduplicated() {
        let csr = Csr::build(3, vec![(2, 5u32), (0, 9), (2, 1), (2, 5)]);
        assert_eq!(csr.row(0), &[9]);
        assert_eq!(csr.row(1), &[] as &[u32]);
        assert_eq!(csr.row(2), &[1, 5]);
        assert_eq!(csr.row(99), &[] as &[u32]);
        assert_eq!(Csr::<u32>::build(2, Vec::new()).row(1), &[] as &[u32]);

        // Against sets, on scattered owners with many duplicates.
        let mut x = 7u64;
        let mut pairs = Vec::new();
        let mut want = vec![std::collections::BTreeSet::new(); 50];
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (owner, item) = ((x >> 33) as u32 % 40, ((x >> 13) % 30) as u32);
            pairs.push((owner, item));
            want[owner as usize].insert(item);
        }
        let csr = Csr::build(50, pairs);
        for (owner, set) in want.iter().enumerate() {
            assert_eq!(
                csr.row(owner as u32),
                set.iter().copied().collect::<Vec<_>>()
            );
        }
        assert_eq!(csr.len(), want.iter().map(|s| s.len()).sum::<usize>());
    }

    #[test]
    fn bitset_basics() {
        let mut s = BitSet::with_len(10);
        s.insert(3);
        s.insert(130);
        assert!(s.contains(3) && s.contains(130) && !s.contains(4));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 130]);
    }
}
