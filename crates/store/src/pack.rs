//! The large records of the store — connector-space entries and the
//! resources last exported — compressed with zstd against a dictionary that
//! is built into the binary.
//!
//! Why a dictionary: a record is about a kilobyte of JSON whose keys, schema
//! URNs and shape repeat in every record. zstd alone finds little to share
//! inside one record (about 2×); given example records as a dictionary it
//! shares those too (about 5×), and the sync store is mostly these records.
//!
//! Why built in rather than trained on each store: a record's bytes then
//! depend only on its content, so "did this entry change" stays a byte
//! comparison inside SQL, and every process that reads the store decodes
//! without loading anything first. A dictionary never changes once released:
//! a better one gets the next tag, and records written with the old one stay
//! readable.
//!
//! Format: plain JSON (first byte `{` or `[`: records written before
//! compression, still read) or [`TAG_DICTIONARY_1`] followed by one zstd
//! frame that states its content size.

use std::cell::RefCell;

use sync::engine::StoreError;
use zstd::bulk::{Compressor, Decompressor};

/// Example records in each shape the store keeps (Active Directory and
/// OpenLDAP entries, metaverse attributes, SCIM users and groups), with
/// made-up values. Never edit: records written with it need these bytes.
static DICTIONARY_1: &[u8] = include_bytes!("pack/dictionary-1.txt");

/// A record compressed against [`DICTIONARY_1`].
const TAG_DICTIONARY_1: u8 = 1;

/// zstd's default level: measured at a few microseconds per record here.
const LEVEL: i32 = 3;

/// Records from this size on (a large group) are compressed at
/// [`LARGE_LEVEL`]: twice as fast, a little larger — a member added to a
/// group of 250,000 rewrites megabytes. The level follows from the size, so
/// a record's bytes still depend only on its content.
const LARGE: usize = 256 << 10;
const LARGE_LEVEL: i32 = 1;

/// The largest record accepted when decoding (a corrupt or hostile state
/// file must not make the reader allocate without bound). A group of a
/// million members exported as SCIM is about 50 MB.
const MAX_RECORD: u64 = 512 << 20;

thread_local! {
    /// One compression and one decompression context per thread: each
    /// loads the dictionary once, and contexts are not shareable.
    static CONTEXTS: RefCell<Option<Contexts>> = const { RefCell::new(None) };
}

/// A thread's compression contexts (for records and for large records) and
/// its decompression context.
struct Contexts {
    compressor: Compressor<'static>,
    large: Compressor<'static>,
    decompressor: Decompressor<'static>,
}

fn with_contexts<T>(f: impl FnOnce(&mut Contexts) -> Result<T, StoreError>) -> Result<T, StoreError> {
    CONTEXTS.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| StoreError("record codec re-entered".into()))?;
        if slot.is_none() {
            let compressor = |level| {
                Compressor::with_dictionary(level, DICTIONARY_1)
                    .map_err(|e| StoreError(format!("cannot set up record compression: {e}")))
            };
            let decompressor = Decompressor::with_dictionary(DICTIONARY_1)
                .map_err(|e| StoreError(format!("cannot set up record decompression: {e}")))?;
            *slot = Some(Contexts { compressor: compressor(LEVEL)?, large: compressor(LARGE_LEVEL)?, decompressor });
        }
        match slot.as_mut() {
            Some(contexts) => f(contexts),
            None => Err(StoreError("record codec unavailable".into())),
        }
    })
}

/// The stored form of a JSON record.
pub(crate) fn pack(json: &str) -> Result<Vec<u8>, StoreError> {
    // Every user's member list: made once (the bytes depend only on the content).
    if json == "[]" {
        static EMPTY_LIST: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        if let Some(packed) = EMPTY_LIST.get() {
            return Ok(packed.clone());
        }
        let packed = compress(json)?;
        return Ok(EMPTY_LIST.get_or_init(|| packed).clone());
    }
    compress(json)
}

fn compress(json: &str) -> Result<Vec<u8>, StoreError> {
    let frame = with_contexts(|contexts| {
        let compressor = if json.len() >= LARGE { &mut contexts.large } else { &mut contexts.compressor };
        compressor.compress(json.as_bytes()).map_err(|e| StoreError(format!("cannot compress a record: {e}")))
    })?;
    let mut stored = Vec::with_capacity(frame.len() + 1);
    stored.push(TAG_DICTIONARY_1);
    stored.extend_from_slice(&frame);
    Ok(stored)
}

/// The JSON text of a stored record, in either form.
pub(crate) fn unpack(stored: &[u8]) -> Result<String, StoreError> {
    match stored.first() {
        Some(b'{' | b'[') => {
            String::from_utf8(stored.to_vec()).map_err(|_| StoreError("a stored record is not UTF-8".into()))
        }
        Some(&TAG_DICTIONARY_1) => {
            let frame = stored.get(1..).unwrap_or_default();
            let size = match zstd::zstd_safe::get_frame_content_size(frame) {
                Ok(Some(size)) if size <= MAX_RECORD => size,
                Ok(Some(size)) => {
                    return Err(StoreError(format!("a stored record claims {size} bytes, over the limit")));
                }
                _ => return Err(StoreError("a stored record is damaged (no zstd frame header)".into())),
            };
            let capacity = usize::try_from(size).map_err(|_| StoreError("a stored record is too large".into()))?;
            let text = with_contexts(|contexts| {
                contexts
                    .decompressor
                    .decompress(frame, capacity)
                    .map_err(|e| StoreError(format!("a stored record is damaged: {e}")))
            })?;
            String::from_utf8(text).map_err(|_| StoreError("a stored record is not UTF-8".into()))
        }
        Some(tag) => {
            Err(StoreError(format!("a stored record has an unknown format (tag {tag}); written by a newer idbridge?")))
        }
        None => Err(StoreError("a stored record is empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dictionary's bytes are part of the stored format.
    #[test]
    fn dictionary_1_never_changes() {
        // FNV-1a, enough to notice an edit.
        let hash = DICTIONARY_1
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        assert_eq!((DICTIONARY_1.len(), hash), (5497, DICTIONARY_1_HASH));
    }
    const DICTIONARY_1_HASH: u64 = 0x49bc5d368b129dcc;

    #[test]
    fn records_round_trip_smaller_and_identical_for_identical_content() {
        // An entry as the LDAP connector stores it; values unlike the dictionary's.
        let record = r#"{"attrs":[["objectClass",["inetOrgPerson","organizationalPerson","person"]],["uid",["zoe.angstrom"]],["departmentNumber",["Forschung"]],["employeeType",["staff"]],["cn",["Zoë Ångström"]],["sn",["Ångström"]],["givenName",["Zoë"]],["displayName",["Zoë Ångström"]],["mail",["zoe.angstrom@example.net"]],["title",["Ingenieurin"]],["l",["Köln"]],["telephoneNumber",["+49 221 555 0101"]],["employeeNumber",["90210"]],["entryUUID",["7c9e6679-7425-40de-944b-e07fc1f90ae7"]]],"dn":"uid=zoe.angstrom,ou=people,dc=example,dc=net"}"#;
        let packed = pack(record).unwrap_or_default();
        assert!(packed.len() < record.len() / 2, "{} bytes from {}", packed.len(), record.len());
        assert_eq!(pack(record).ok(), Some(packed.clone()), "the same content must give the same bytes");
        assert_eq!(unpack(&packed).ok().as_deref(), Some(record));
        // The empty list, made once, is what compressing it gives.
        assert_eq!(pack("[]").ok(), compress("[]").ok());
        assert_eq!(pack("[]").ok(), pack("[]").ok());
        assert_eq!(unpack(&pack("[]").unwrap_or_default()).ok().as_deref(), Some("[]"));
    }

    #[test]
    fn plain_json_from_before_is_still_read() {
        assert_eq!(unpack(br#"{"a":1}"#).ok().as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(unpack(b"[1]").ok().as_deref(), Some("[1]"));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let packed = pack(r#"{"a":"b"}"#).unwrap_or_default();
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![TAG_DICTIONARY_1], vec![9, 1, 2], b"xyz".to_vec()];
        for cut in 1..packed.len() {
            cases.push(packed.get(..cut).unwrap_or_default().to_vec());
        }
        // A frame header claiming an enormous size is refused before allocating.
        let mut huge = vec![TAG_DICTIONARY_1, 0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        cases.push(huge);
        for case in cases {
            assert!(unpack(&case).is_err(), "{case:?} was accepted");
        }
    }

    #[test]
    fn large_records_with_non_ascii_round_trip() {
        let members: Vec<String> = (0..50_000).map(|i| format!("{{\"value\":\"ü-{i:08}\"}}")).collect();
        let record = format!("{{\"members\":[{}]}}", members.join(","));
        let packed = pack(&record).unwrap_or_default();
        assert_eq!(unpack(&packed).ok(), Some(record));
    }
}
