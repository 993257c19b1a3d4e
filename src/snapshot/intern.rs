//! Compact string interning: keys become dense `u32` ids.
//!
//! A snapshot holds a million instance keys and a hundred thousand user keys;
//! a `HashMap<String, u32>` would cost a heap allocation and ~50 bytes per
//! key. Here every key lives in one arena string, an entry costs a span
//! (8 bytes) and a scope (4 bytes), and a lookup borrows the caller's `&str`
//! without allocating.
//!
//! While a snapshot is built, keys are found through a `HashTable` of
//! 16-byte slots. Once it is built, [`Interner::freeze`] lays the keys out
//! for reading: a minimal perfect hash ([`ptr_hash`]) maps each key to a
//! position, and the key's 32-byte record there holds its id, scope, length
//! and bytes (the first [`PREFIX`] of a key longer than [`INLINE`]). Finding
//! a key then reads the perfect hash's pilots (about 3 bits a key, so they
//! stay in cache) and one record, one cache line; the table read its control
//! bytes, then a slot, then the key's bytes in the arena, each waiting for
//! the one before (docs/performance.md). The records are the keys' only
//! copy, which also makes a frozen interner smaller than an open one.
//!
//! A *scope* lets one table hold keys that are only unique within a parent,
//! e.g. instance keys within their resource type: `(type_id, "d1")`.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use ptr_hash::{bucket_fn::Linear, hash::FxHash, PtrHash, PtrHashParams};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const NONE: u32 = u32::MAX;

#[derive(Default)]
pub struct Interner {
    keys: Keys,
    /// Hashes `(scope, key)` for the index; seeded at random per process,
    /// and again at each attempt to freeze.
    hasher: DefaultHashBuilder,
    /// Set when a key could not be added because ids or the text's offsets
    /// would pass 32 bits; the build then refuses the document.
    overflowed: bool,
}

enum Keys {
    /// Taking keys.
    Open(Open),
    /// Laid out for reading ([`Interner::freeze`]).
    Frozen(Frozen),
}

impl Default for Keys {
    fn default() -> Self {
        Keys::Open(Open::default())
    }
}

#[derive(Default)]
struct Open {
    arena: String,
    spans: Vec<(u32, u32)>,
    scopes: Vec<u32>,
    /// Each slot carries what the comparison needs, so a lookup touches
    /// the table and the key's bytes only.
    table: HashTable<Slot>,
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

impl Open {
    fn name(&self, id: u32) -> &str {
        let (start, len) = self.spans[id as usize];
        &self.arena[start as usize..(start + len) as usize]
    }

    fn find(&self, hash: u64, scope: u32, key: &str) -> Option<u32> {
        self.table
            .find(hash, |s| {
                s.scope == scope && s.len as usize == key.len() && s.key(&self.arena) == key
            })
            .map(|s| s.id)
    }
}

type Mph = PtrHash<u64, Linear, Vec<u32>, FxHash>;

/// Keys at the positions a perfect hash of their hashes gives them.
struct Frozen {
    mph: Mph,
    records: Box<[Record]>,
    /// Each id's position in `records`.
    at: Box<[u32]>,
    /// The keys longer than [`INLINE`], whole, where their records point.
    long: String,
}

impl Frozen {
    fn record(&self, id: u32) -> &Record {
        &self.records[self.at[id as usize] as usize]
    }
}

/// Key bytes a record holds whole: user and instance keys such as
/// `user-97861` or `doc-14121` fit, and so compare without a second read.
const INLINE: usize = 20;
/// Of a longer key, the bytes a record holds to tell it from another key of
/// its length before reading the whole key.
const PREFIX: usize = 16;

#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Record {
    id: u32,
    scope: u32,
    len: u32,
    /// A key of up to [`INLINE`] bytes; of a longer one, its first
    /// [`PREFIX`] bytes, then its offset in [`Frozen::long`] (little endian).
    bytes: [u8; INLINE],
}

impl Record {
    const EMPTY: Record = Record {
        id: NONE,
        scope: NONE,
        len: 0,
        bytes: [0; INLINE],
    };

    /// The record of `key`, adding it to `long` if it does not fit.
    fn new(id: u32, scope: u32, key: &str, long: &mut String) -> Self {
        let mut bytes = [0; INLINE];
        if key.len() <= INLINE {
            bytes[..key.len()].copy_from_slice(key.as_bytes());
        } else {
            bytes[..PREFIX].copy_from_slice(&key.as_bytes()[..PREFIX]);
            // The open interner's arena held every key within 32-bit
            // offsets, so the long ones fit too.
            bytes[PREFIX..].copy_from_slice(&(long.len() as u32).to_le_bytes());
            long.push_str(key);
        }
        Record {
            id,
            scope,
            len: key.len() as u32,
            bytes,
        }
    }

    fn offset(&self) -> usize {
        let mut b = [0; 4];
        b.copy_from_slice(&self.bytes[PREFIX..]);
        u32::from_le_bytes(b) as usize
    }

    fn key<'a>(&'a self, long: &'a str) -> &'a str {
        let len = self.len as usize;
        if len <= INLINE {
            // Copied whole from a `str`, so always UTF-8.
            std::str::from_utf8(&self.bytes[..len]).unwrap_or_default()
        } else {
            &long[self.offset()..self.offset() + len]
        }
    }

    /// Whether this is `(scope, key)`.
    #[inline]
    fn is(&self, scope: u32, key: &str, long: &str) -> bool {
        let k = key.as_bytes();
        if self.scope != scope || self.len as usize != k.len() {
            return false;
        }
        if k.len() <= INLINE {
            self.bytes[..k.len()] == *k
        } else {
            self.bytes[..PREFIX] == k[..PREFIX] && self.key(long) == key
        }
    }
}

/// Attempts at a perfect hash before an interner keeps its table; each
/// draws a new hasher, so keys whose hashes collide under one do not stop
/// the next. `ptr_hash` itself tries ten seeds per hasher.
const FREEZE_ATTEMPTS: usize = 3;

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `keys` keys without regrowing the table.
    pub fn with_capacity(keys: usize) -> Self {
        Interner {
            keys: Keys::Open(Open {
                spans: Vec::with_capacity(keys),
                scopes: Vec::with_capacity(keys),
                table: HashTable::with_capacity(keys),
                ..Open::default()
            }),
            ..Self::default()
        }
    }

    fn hash(hasher: &DefaultHashBuilder, scope: u32, key: &str) -> u64 {
        let mut h = hasher.build_hasher();
        scope.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    }

    /// Makes `open`'s table again, from its keys.
    fn index(open: &mut Open, hasher: &DefaultHashBuilder) {
        let Open {
            arena,
            spans,
            scopes,
            table,
        } = open;
        *table = HashTable::with_capacity(spans.len());
        for (id, (&(start, len), &scope)) in (0u32..).zip(spans.iter().zip(scopes.iter())) {
            let slot = Slot {
                id,
                scope,
                start,
                len,
            };
            table.insert_unique(Self::hash(hasher, scope, slot.key(arena)), slot, |s| {
                Self::hash(hasher, s.scope, s.key(arena))
            });
        }
    }

    /// The keys to add to: a frozen interner's are laid out again.
    fn open(&mut self) -> &mut Open {
        if let Keys::Frozen(_) = self.keys {
            let mut open = Open::default();
            for (id, key) in self.iter() {
                open.spans.push((open.arena.len() as u32, key.len() as u32));
                open.arena.push_str(key);
                open.scopes.push(self.scope(id));
            }
            Self::index(&mut open, &self.hasher);
            self.keys = Keys::Open(open);
        }
        match &mut self.keys {
            Keys::Open(open) => open,
            Keys::Frozen(_) => unreachable!("laid out open above"),
        }
    }

    /// The id of `key` in `scope`, adding it if new.
    pub fn intern_in(&mut self, scope: u32, key: &str) -> u32 {
        if let Some(id) = self.get_in(scope, key) {
            return id;
        }
        let hash = Self::hash(&self.hasher, scope, key);
        let open = self.open();
        let fits = (
            u32::try_from(open.spans.len())
                .ok()
                .filter(|&id| id != NONE),
            u32::try_from(open.arena.len()).ok(),
            u32::try_from(open.arena.len() + key.len()).ok(),
        );
        let (Some(id), Some(start), Some(_)) = fits else {
            self.overflowed = true;
            return NONE;
        };
        let len = key.len() as u32;
        open.arena.push_str(key);
        open.spans.push((start, len));
        open.scopes.push(scope);
        let slot = Slot {
            id,
            scope,
            start,
            len,
        };
        let hasher = &self.hasher;
        let Keys::Open(Open { arena, table, .. }) = &mut self.keys else {
            unreachable!("opened above")
        };
        table.insert_unique(hash, slot, |s| Self::hash(hasher, s.scope, s.key(arena)));
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
    #[inline]
    pub fn hash_in(&self, scope: u32, key: &str) -> u64 {
        Self::hash(&self.hasher, scope, key)
    }

    /// `get_in`, with `hash` from this interner's `hash_in(scope, key)`.
    #[inline]
    pub fn get_hashed(&self, hash: u64, scope: u32, key: &str) -> Option<u32> {
        match &self.keys {
            Keys::Frozen(f) => {
                let record = f.records.get(f.mph.index(&hash))?;
                record.is(scope, key, &f.long).then_some(record.id)
            }
            Keys::Open(open) => open.find(hash, scope, key),
        }
    }

    /// Lays the keys out for reading (see the module's notes), for an
    /// interner that takes no more keys; one that does is laid out open
    /// again. Stays open if no perfect hash could be made, which takes keys
    /// whose 64-bit hashes collide under three random hashers.
    pub fn freeze(&mut self) {
        self.freeze_with(|hashes| PtrHash::try_new(hashes, PtrHashParams::default_fast()));
    }

    /// [`Interner::freeze`], with `perfect` making the perfect hash.
    fn freeze_with(&mut self, perfect: impl Fn(&[u64]) -> Option<Mph>) {
        let Keys::Open(open) = &mut self.keys else {
            return;
        };
        if open.spans.is_empty() {
            return;
        }
        // The table goes first: the records take its place, and a build
        // should not hold both (at a million keys, 20 MB).
        open.table = HashTable::new();
        let open = &*open;
        for _ in 0..FREEZE_ATTEMPTS {
            let hasher = DefaultHashBuilder::default();
            let hashes: Vec<u64> = (0u32..)
                .zip(&open.scopes)
                .map(|(id, &scope)| Self::hash(&hasher, scope, open.name(id)))
                .collect();
            let Some(mph) = perfect(&hashes) else {
                continue;
            };
            let mut records = vec![Record::EMPTY; hashes.len()].into_boxed_slice();
            let mut at = Vec::with_capacity(hashes.len());
            let mut long = String::new();
            for ((id, hash), &scope) in (0u32..).zip(&hashes).zip(&open.scopes) {
                let pos = mph.index(hash);
                records[pos] = Record::new(id, scope, open.name(id), &mut long);
                at.push(pos as u32);
            }
            long.shrink_to_fit();
            self.hasher = hasher;
            self.keys = Keys::Frozen(Frozen {
                mph,
                records,
                at: at.into_boxed_slice(),
                long,
            });
            return;
        }
        tracing::warn!(
            keys = open.spans.len(),
            "no perfect hash over these keys; keeping the hash table"
        );
        if let Keys::Open(open) = &mut self.keys {
            Self::index(open, &self.hasher);
        }
        self.shrink_to_fit();
    }

    /// Whether a key was refused for passing 32-bit ids or offsets.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.get_in(0, key)
    }

    pub fn name(&self, id: u32) -> &str {
        match &self.keys {
            Keys::Open(open) => open.name(id),
            Keys::Frozen(f) => f.record(id).key(&f.long),
        }
    }

    pub fn scope(&self, id: u32) -> u32 {
        match &self.keys {
            Keys::Open(open) => open.scopes[id as usize],
            Keys::Frozen(f) => f.record(id).scope,
        }
    }

    pub fn len(&self) -> usize {
        match &self.keys {
            Keys::Open(open) => open.spans.len(),
            Keys::Frozen(f) => f.at.len(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        (0..self.len() as u32).map(move |id| (id, self.name(id)))
    }

    pub fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        if let Keys::Open(open) = &mut self.keys {
            open.arena.shrink_to_fit();
            open.spans.shrink_to_fit();
            open.scopes.shrink_to_fit();
            let arena = &open.arena;
            open.table
                .shrink_to_fit(|s| Self::hash(hasher, s.scope, s.key(arena)));
        }
    }

    /// Frees the table that finds a key's id, keeping the keys: for an
    /// interner that is only read by id from here on (`get` then finds
    /// nothing). The table is over half an open interner's memory
    /// (docs/performance.md); a frozen one keeps its keys in its index.
    pub fn drop_lookups(&mut self) {
        if let Keys::Open(open) = &mut self.keys {
            open.table = HashTable::new();
        }
    }

    /// Forgets every key from id `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let open = self.open();
        open.arena.truncate(open.spans[len].0 as usize);
        open.spans.truncate(len);
        open.scopes.truncate(len);
        open.table.retain(|s| (s.id as usize) < len);
    }

    /// Heap bytes held, for the snapshot's memory report.
    pub fn heap_bytes(&self) -> usize {
        match &self.keys {
            Keys::Open(open) => {
                open.arena.capacity()
                    + open.spans.capacity() * 8
                    + open.scopes.capacity() * 4
                    + open.table.capacity() * (std::mem::size_of::<Slot>() + 1)
            }
            Keys::Frozen(f) => {
                let (pilots, remap) = f.mph.bits_per_element();
                f.records.len() * std::mem::size_of::<Record>()
                    + f.at.len() * 4
                    + f.long.capacity()
                    + ((pilots + remap) * f.records.len() as f64 / 8.0) as usize
            }
        }
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

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(&self.0).flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                let b = (rest != 0).then(|| rest.trailing_zeros())?;
                rest &= rest - 1;
                Some(w * 64 + b)
            })
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

    /// Keys around the record's inline and prefix lengths, scoped and not,
    /// with multi-byte characters where a prefix cuts one.
    fn awkward_keys() -> Vec<(u32, String)> {
        let mut keys = vec![(0, String::new()), (0, "a".into()), (5, "a".into())];
        for len in [15, 16, 17, 19, 20, 21, 36, 200] {
            keys.push((0, "k".repeat(len)));
            keys.push((1, "k".repeat(len)));
            // Same length and prefix, differing in the last byte.
            keys.push((0, format!("{}z", "k".repeat(len - 1))));
        }
        keys.push((0, format!("{}é-and-more", "x".repeat(15))));
        keys.push((0, "ключ-пользователя-42".into()));
        keys.extend((0..5_000).map(|n| (n % 3, format!("user-{n}"))));
        keys
    }

    #[test]
    fn a_frozen_interner_finds_what_the_open_one_did() {
        let keys = awkward_keys();
        let mut open = Interner::new();
        let ids: Vec<u32> = keys.iter().map(|(s, k)| open.intern_in(*s, k)).collect();
        let mut frozen = Interner::new();
        for (s, k) in &keys {
            frozen.intern_in(*s, k);
        }
        frozen.freeze();
        assert!(matches!(frozen.keys, Keys::Frozen(_)));
        assert!(frozen.heap_bytes() < open.heap_bytes());
        assert_eq!(frozen.len(), open.len());
        for ((scope, key), &id) in keys.iter().zip(&ids) {
            assert_eq!(frozen.get_in(*scope, key), Some(id), "{scope} {key:?}");
            assert_eq!((frozen.name(id), frozen.scope(id)), (key.as_str(), *scope));
        }
        let absent = [
            (0, "user-5000".to_string()),
            (2, "user-1".to_string()),
            (0, "k".repeat(22)),
            (0, format!("{}y", "k".repeat(20))),
            (0, format!("{}é-and-morE", "x".repeat(15))),
            (9, "a".into()),
        ];
        for (scope, key) in &absent {
            assert_eq!(frozen.get_in(*scope, key), None, "{scope} {key:?}");
        }
        // Keys added after freezing lay it out open again, ids kept.
        let more = frozen.intern_in(4, "later");
        assert_eq!(more as usize, keys.len());
        assert_eq!(
            frozen.get_in(0, &"k".repeat(200)),
            open.get_in(0, &"k".repeat(200))
        );
        frozen.freeze();
        assert_eq!(frozen.get_in(4, "later"), Some(more));
        frozen.truncate(3);
        assert_eq!(
            (frozen.len(), frozen.get_in(5, "a"), frozen.get("user-7")),
            (3, Some(2), None)
        );

        // A frozen interner writes the same list as an open one.
        let cfg = bincode::config::standard();
        let mut again = Interner::new();
        for (s, k) in &keys {
            again.intern_in(*s, k);
        }
        let open_bytes = bincode::serde::encode_to_vec(&again, cfg).unwrap();
        again.freeze();
        assert_eq!(
            bincode::serde::encode_to_vec(&again, cfg).unwrap(),
            open_bytes
        );

        let mut empty = Interner::new();
        empty.freeze();
        assert_eq!((empty.len(), empty.get("")), (0, None));

        // Without a perfect hash, the interner keeps working open.
        let mut kept = Interner::new();
        for (s, k) in &keys {
            kept.intern_in(*s, k);
        }
        kept.freeze_with(|_| None);
        assert!(matches!(kept.keys, Keys::Open(_)));
        for ((scope, key), &id) in keys.iter().zip(&ids) {
            assert_eq!(kept.get_in(*scope, key), Some(id), "{scope} {key:?}");
        }
        assert_eq!(kept.intern_in(4, "later") as usize, keys.len());
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
        for i in [0, 63, 64, 127, 200] {
            s.insert(i);
        }
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![0, 3, 63, 64, 127, 130, 200]
        );
        assert_eq!(BitSet::with_len(0).iter().next(), None);
    }
}
