//! A list kept in fixed-size chunks, for the staged document's fact lists.
//!
//! A reload builds its snapshot beside the serving one, so what it holds at
//! its peak sets the process's peak. A `Vec` of a million assignments grows
//! by doubling (at each step the old and the new buffer are both live, and
//! the last leaves it up to 2x oversized), and the builder could only free
//! it whole, after turning every fact into an index entry: the facts and
//! their index were held at once. Here a list grows one chunk at a time and
//! is consumed chunk by chunk, each chunk freed as soon as it is read.
//!
//! It serializes as a plain sequence, exactly as a `Vec` does, so the
//! backup format and the content hash do not depend on it.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// About this many bytes a chunk: big enough that a chunk is one
/// allocation of its own (returned to the OS when freed), small enough that
/// the unused tail of the last one does not matter.
const CHUNK_BYTES: usize = 128 << 10;

pub struct Chunked<T> {
    /// Every chunk but the last is full.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    const PER_CHUNK: usize = {
        let size = std::mem::size_of::<T>();
        if size == 0 || size >= CHUNK_BYTES {
            1
        } else {
            CHUNK_BYTES / size
        }
    };

    pub fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::PER_CHUNK => {
                // Never grown past a chunk, even after `shrink_to_fit`.
                chunk.reserve_exact(Self::PER_CHUNK - chunk.len());
                chunk.push(item);
            }
            _ => {
                let mut chunk = Vec::with_capacity(Self::PER_CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + Clone + '_ {
        self.chunks.iter().flatten()
    }

    #[cfg(test)]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(i / Self::PER_CHUNK)?
            .get_mut(i % Self::PER_CHUNK)
    }

    /// Keeps the first `len` items.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let (full, rest) = (len / Self::PER_CHUNK, len % Self::PER_CHUNK);
        self.chunks.truncate(full + usize::from(rest > 0));
        if rest > 0 {
            self.chunks[full].truncate(rest);
        }
        self.len = len;
    }

    /// Frees the unused tail of the last chunk.
    pub fn shrink_to_fit(&mut self) {
        if let Some(last) = self.chunks.last_mut() {
            last.shrink_to_fit();
        }
        self.chunks.shrink_to_fit();
    }
}

/// Consumes the list in order, freeing each chunk once it has been read.
impl<T> IntoIterator for Chunked<T> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<T: Serialize> Serialize for Chunked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length up front, as a `Vec` writes it (bincode needs it).
        let mut seq = s.serialize_seq(Some(self.len))?;
        for item in self.iter() {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
            type Value = Chunked<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Chunked<T>, A::Error> {
                let mut list = Chunked::default();
                while let Some(item) = seq.next_element()? {
                    list.push(item);
                }
                list.shrink_to_fit();
                Ok(list)
            }
        }
        d.deserialize_seq(Items(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items per chunk of `u64`s, to cross chunk boundaries in tests.
    const PER: usize = Chunked::<u64>::PER_CHUNK;

    fn filled(n: usize) -> Chunked<u64> {
        let mut list = Chunked::default();
        (0..n as u64).for_each(|i| list.push(i));
        list
    }

    #[test]
    fn keeps_order_across_chunks() {
        let n = 2 * PER + 5;
        let list = filled(n);
        assert_eq!(list.len(), n);
        assert_eq!(list.chunks.len(), 3);
        assert!(list.iter().copied().eq(0..n as u64));
        assert!(list.into_iter().eq(0..n as u64));
    }

    #[test]
    fn truncate_at_and_between_chunk_boundaries() {
        for keep in [0, 1, PER - 1, PER, PER + 1, 2 * PER, 2 * PER + 4, 9 * PER] {
            let mut list = filled(2 * PER + 5);
            list.truncate(keep);
            let want = keep.min(2 * PER + 5);
            assert_eq!(list.len(), want, "keep {keep}");
            assert!(list.iter().copied().eq(0..want as u64), "keep {keep}");
            // Pushing after a truncate continues where it was cut.
            list.push(7777);
            assert_eq!(list.iter().nth(want), Some(&7777), "keep {keep}");
            assert_eq!(list.len(), want + 1);
        }
    }

    #[test]
    fn pushing_after_shrink_never_grows_a_chunk_past_its_size() {
        let mut list = filled(PER / 2);
        list.shrink_to_fit();
        (0..PER as u64).for_each(|i| list.push(i));
        assert!(list.chunks.iter().all(|c| c.capacity() == PER));
        *list.get_mut(PER + 1).unwrap() = 5;
        assert_eq!(list.iter().nth(PER + 1), Some(&5));
        assert!(list.get_mut(list.len()).is_none());
    }

    #[test]
    fn encodes_as_a_vec_does() {
        let cfg = bincode::config::standard();
        let list = filled(PER + 3);
        let as_vec: Vec<u64> = list.iter().copied().collect();
        let bytes = bincode::serde::encode_to_vec(&list, cfg).unwrap();
        assert_eq!(bytes, bincode::serde::encode_to_vec(&as_vec, cfg).unwrap());
        let (back, _): (Chunked<u64>, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert!(back.into_iter().eq(as_vec));
    }
}
