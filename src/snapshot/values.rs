//! Attribute values and user profile strings, each distinct value stored
//! once.
//!
//! A hundred thousand users with a country, a department and a level hold
//! three hundred thousand `serde_json::Value`s (32 bytes each, plus a heap
//! string for most) for a few dozen distinct values, and their first and
//! last names repeat as much. Here an object's attributes are `(name id,
//! value id)` pairs into one pool: 8 bytes an entry, and each distinct value
//! costs once. Values stay `Value`s, so a condition reads them borrowed.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::intern::NONE;
use crate::model::{Json, JsonRef};

/// Distinct JSON values by dense id. Equal means `Value`'s own equality:
/// `1` and `1.0` are two values, so every value reads back as written.
#[derive(Default)]
pub(crate) struct Values {
    items: Vec<Value>,
    /// Finds a value's id while staging. Empty after [`Values::drop_lookups`]
    /// and after decoding (a decoded pool is only read by id; `intern`
    /// rebuilds it if ever needed).
    lookup: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Values {
    /// The id of `v`, adding it if new.
    pub fn intern(&mut self, v: Value) -> u32 {
        if self.lookup.len() != self.items.len() {
            self.rebuild_lookup();
        }
        let hash = self.hasher.hash_one(&v);
        let items = &self.items;
        if let Some(&id) = self.lookup.find(hash, |&id| items[id as usize] == v) {
            return id;
        }
        let id = self.items.len() as u32;
        self.items.push(v);
        let (items, hasher) = (&self.items, &self.hasher);
        self.lookup
            .insert_unique(hash, id, |&id| hasher.hash_one(&items[id as usize]));
        id
    }

    fn rebuild_lookup(&mut self) {
        let (items, hasher) = (&self.items, &self.hasher);
        self.lookup = HashTable::with_capacity(items.len());
        for (id, v) in items.iter().enumerate() {
            self.lookup
                .insert_unique(hasher.hash_one(v), id as u32, |&id| {
                    hasher.hash_one(&items[id as usize])
                });
        }
    }

    pub fn get(&self, id: u32) -> &Value {
        &self.items[id as usize]
    }

    /// A value by id, `None` for `NONE` (an absent profile field).
    pub fn opt(&self, id: u32) -> Option<&Value> {
        (id != NONE).then(|| self.get(id))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Forgets every value from id `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.items.len() {
            return;
        }
        self.items.truncate(len);
        self.lookup.retain(|&mut id| (id as usize) < len);
    }

    /// Frees the table that finds a value's id: for a pool read by id only.
    pub fn drop_lookups(&mut self) {
        self.lookup = HashTable::new();
    }

    pub fn shrink_to_fit(&mut self) {
        self.items.shrink_to_fit();
        let (items, hasher) = (&self.items, &self.hasher);
        self.lookup
            .shrink_to_fit(|&id| hasher.hash_one(&items[id as usize]));
    }
}

/// Serialized as the list of values in id order, each as [`Json`] (JSON
/// text in binary formats).
impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items.iter().map(JsonRef))
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<Json>::deserialize(d)?;
        Ok(Values {
            // `Json` is a `Value`: collected in place, not copied.
            items: items.into_iter().map(|Json(v)| v).collect(),
            ..Values::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_share_an_id_and_read_back_as_written() {
        let mut v = Values::default();
        let a = v.intern(json!("nl"));
        let one = v.intern(json!(1));
        let one_f = v.intern(json!(1.0));
        let obj = v.intern(json!({"a": [1, "x"]}));
        assert_eq!(v.intern(json!("nl")), a);
        assert_eq!(v.intern(json!({"a": [1, "x"]})), obj);
        assert_ne!(one, one_f, "1 and 1.0 are kept apart");
        assert_eq!(v.get(one_f), &json!(1.0));
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn truncate_forgets_and_a_decoded_pool_still_interns() {
        let mut v = Values::default();
        v.intern(json!("a"));
        let b = v.intern(json!("b"));
        v.truncate(1);
        assert_eq!(v.len(), 1);
        assert_eq!(v.intern(json!("c")), b, "the id of `b` is free again");

        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&v, cfg).unwrap();
        let (mut back, _): (Values, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back.get(1), &json!("c"));
        assert_eq!(
            back.intern(json!("a")),
            0,
            "found after the lookup is rebuilt"
        );
        assert_eq!(back.intern(json!("d")), 2);
    }
}
