//! A large group's member values, kept apart from its stored entry in
//! chunks cut by content.
//!
//! Why: a directory sends a group whole for every change (syncrepl, and
//! DirSync's re-read). Stored as one record, a member added to a group of
//! 250,000 meant decompressing, decoding, encoding, compressing and writing
//! megabytes. Stored in chunks, the import hashes what came (one pass,
//! no allocation per value), compares the chunks' digests with the stored
//! ones, reads only the stored chunks that differ and writes only the new
//! ones — a few hundred values each, whatever the group's size.
//!
//! Why cut by content (a chunk ends after a value whose hash ends in nine
//! zero bits) rather than every N values: a value added or removed in the
//! middle then changes one chunk (or splits it in two), not every chunk
//! after it.
//!
//! Why not one row per value: comparing what came with what is stored would
//! then read every row.
//!
//! The digests are SipHash-1-3 (128 bits, fixed keys — part of the stored
//! format) over a chunk's attribute name and values. Two different chunks
//! sharing a digest (odds ~2⁻¹²⁸; finding such a pair takes ~2⁶⁴ work even
//! knowing the keys) would hide a change until the next full import.

use directory::{Entry, Value};
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// Groups with at least this many member values are stored split.
pub(crate) const SPLIT_AT: usize = 2048;

/// A chunk ends after a value whose hash has these bits zero (512 values
/// on average)…
const BOUNDARY_MASK: u64 = 511;
/// … or after this many values.
const MAX_CHUNK: usize = 4096;

/// The digest's keys: part of the stored format, never changed.
const DIGEST_KEYS: (u64, u64) = (0x6964_6272_6964_6765, 0x6368_756e_6b73_3031);

pub(crate) type Digest = [u8; 16];

/// Some member values of one attribute, in the directory's order.
pub(crate) struct Chunk<'a> {
    pub attr: &'a str,
    pub values: Vec<&'a str>,
    pub digest: Digest,
}

/// Whether `name` is a member attribute (kept in chunks when split).
pub(crate) fn is_member_attribute(name: &str) -> bool {
    sync::mapping::MEMBER_ATTRIBUTES.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// The entry's member values in chunks, or `None` when it is stored whole:
/// fewer than [`SPLIT_AT`] member values, or one that is not text.
pub(crate) fn split(entry: &Entry) -> Option<Vec<Chunk<'_>>> {
    let members: Vec<&directory::Attribute> = entry.attributes().filter(|a| is_member_attribute(&a.name)).collect();
    if members.iter().map(|a| a.values.len()).sum::<usize>() < SPLIT_AT {
        return None;
    }
    let mut chunks = Vec::new();
    for attribute in members {
        let mut digest = ChunkDigest::new(&attribute.name);
        let mut values = Vec::new();
        for value in &attribute.values {
            let Value::Text(text) = value else { return None };
            digest.add(text);
            values.push(text.as_str());
            if boundary_hash(text.as_bytes()) & BOUNDARY_MASK == 0 || values.len() >= MAX_CHUNK {
                chunks.push(Chunk {
                    attr: &attribute.name,
                    values: std::mem::take(&mut values),
                    digest: digest.finish(),
                });
                digest = ChunkDigest::new(&attribute.name);
            }
        }
        if !values.is_empty() {
            chunks.push(Chunk { attr: &attribute.name, values, digest: digest.finish() });
        }
    }
    Some(chunks)
}

/// Where chunks end: a cheap hash of a value (a multiply-rotate over its
/// 8-byte words, high bits mixed down). It only places boundaries — a
/// crafted value can at worst make chunks shorter or longer (never past
/// [`MAX_CHUNK`]) —, so it need not resist collisions; the digest does.
fn boundary_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut words = bytes.chunks_exact(8);
    let mut h = bytes.len() as u64;
    for word in words.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    for (t, b) in tail.iter_mut().zip(words.remainder()) {
        *t = *b;
    }
    h = (h.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 32) ^ (h >> 47)
}

/// A chunk's digest: SipHash-1-3 (128 bits) over the attribute's name and
/// each value with its length, streamed — one finalization per chunk.
struct ChunkDigest(SipHasher13);

impl ChunkDigest {
    fn new(attr: &str) -> Self {
        let mut hasher = SipHasher13::new_with_keys(DIGEST_KEYS.0, DIGEST_KEYS.1);
        hasher.write(attr.to_ascii_lowercase().as_bytes());
        hasher.write(&[0]);
        ChunkDigest(hasher)
    }

    fn add(&mut self, value: &str) {
        self.0.write(&(value.len() as u64).to_le_bytes());
        self.0.write(value.as_bytes());
    }

    fn finish(self) -> Digest {
        let digest = self.0.finish128();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&digest.h1.to_le_bytes());
        bytes[8..].copy_from_slice(&digest.h2.to_le_bytes());
        bytes
    }
}

/// The chunks' digests in order, as the entry's row keeps them.
pub(crate) fn digest_list(chunks: &[Chunk<'_>]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.digest).collect()
}

/// The digests of a stored list (empty: the entry is stored whole).
pub(crate) fn digests(list: &[u8]) -> Vec<Digest> {
    list.chunks_exact(16).filter_map(|d| Digest::try_from(d).ok()).collect()
}

/// A chunk's values as stored (packed JSON array).
pub(crate) fn values_to_json(values: &[&str]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

pub(crate) fn values_from_json(text: &str) -> Option<Vec<String>> {
    serde_json::from_str(text).ok()
}

/// Puts a stored head and its chunks (attribute, values; in the digest
/// list's order) back together.
pub(crate) fn join(mut head: Entry, chunks: Vec<(String, Vec<String>)>) -> Entry {
    for (attr, values) in chunks {
        head.push_attribute(directory::Attribute { name: attr, values: values.into_iter().map(Value::Text).collect() });
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::Dn;

    fn group(members: impl Iterator<Item = String>) -> Entry {
        let mut e = Entry::new(Dn::parse("cn=g,dc=x").unwrap_or_default());
        e.add("cn", "g");
        for m in members {
            e.add("member", m);
        }
        e
    }

    fn member(i: usize) -> String {
        format!("uid=user{i},ou=people,dc=example,dc=org")
    }

    #[test]
    fn small_groups_stay_whole() {
        assert!(split(&group((0..SPLIT_AT - 1).map(member))).is_none());
        let mut e = group((0..SPLIT_AT).map(member));
        assert!(split(&e).is_some());
        e.add("uniqueMember", Value::Binary(vec![1]));
        assert!(split(&e).is_none(), "a binary member value keeps the entry whole");
    }

    /// A value added in the middle changes one chunk (or splits it): the
    /// others keep their digests.
    #[test]
    fn a_change_in_the_middle_changes_one_chunk() {
        let before = group((0..20_000).map(member));
        let mut after_members: Vec<String> = (0..20_000).map(member).collect();
        after_members.insert(10_000, "uid=new,ou=people,dc=example,dc=org".into());
        after_members.remove(15_000);
        let after = group(after_members.into_iter());
        let (Some(old), Some(new)) = (split(&before), split(&after)) else { panic!("both split") };
        assert!((15..=100).contains(&old.len()), "about 40 chunks of ~512: {}", old.len());
        assert!(old.iter().all(|c| c.values.len() <= MAX_CHUNK));
        let old_set: std::collections::HashSet<Digest> = old.iter().map(|c| c.digest).collect();
        let new_set: std::collections::HashSet<Digest> = new.iter().map(|c| c.digest).collect();
        let gone = old.iter().filter(|c| !new_set.contains(&c.digest)).count();
        let came = new.iter().filter(|c| !old_set.contains(&c.digest)).count();
        assert!((1..=2).contains(&gone) && (1..=4).contains(&came), "gone {gone}, came {came}");
        // Put back together, the entry is the same.
        let stored: Vec<(String, Vec<String>)> =
            new.iter().map(|c| (c.attr.to_string(), c.values.iter().map(|v| v.to_string()).collect())).collect();
        let mut head = after.clone();
        head.remove("member");
        assert_eq!(join(head, stored), after);
        assert_eq!(digests(&digest_list(&new)).len(), new.len());
    }

    #[test]
    fn digests_name_the_attribute_and_the_values() {
        let (one, two) = (group((0..SPLIT_AT).map(member)), group((0..SPLIT_AT).map(member)));
        let (Some(a), Some(b)) = (split(&one), split(&two)) else { panic!("split") };
        assert_eq!(digest_list(&a), digest_list(&b));
        let mut unique = Entry::new(Dn::parse("cn=g,dc=x").unwrap_or_default());
        for i in 0..SPLIT_AT {
            unique.add("uniqueMember", member(i));
        }
        let Some(c) = split(&unique) else { panic!("split") };
        assert_ne!(digest_list(&a), digest_list(&c));
        // Non-ASCII values hash as their bytes.
        let e = group((0..SPLIT_AT).map(|i| format!("cn=Zoë {i} ✓,dc=x")));
        let Some(chunks) = split(&e) else { panic!("split") };
        assert_eq!(chunks.iter().map(|c| c.values.len()).sum::<usize>(), SPLIT_AT);
        let json = values_to_json(&chunks[0].values);
        assert_eq!(values_from_json(&json).map(|v| v.len()), Some(chunks[0].values.len()));
    }
}
