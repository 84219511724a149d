//! Source anchors: the never-changing identity of an on-premises object, and
//! the Base64 immutableId derived from it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::value::{Guid, ValueError};

/// The raw bytes of a source anchor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Anchor(pub Vec<u8>);

impl Anchor {
    /// From an AD `objectGUID` / `ms-DS-ConsistencyGuid` value (16 bytes, AD order).
    pub fn from_ad_guid(bytes: &[u8]) -> Result<Anchor, ValueError> {
        Guid::from_ad_bytes(bytes).map(|g| Anchor(g.ad_bytes().to_vec()))
    }

    /// From OpenLDAP's `entryUUID` text: the 16 RFC 4122 bytes.
    pub fn from_entry_uuid(text: &str) -> Result<Anchor, ValueError> {
        Guid::parse(text).map(|g| Anchor(g.to_rfc4122_bytes().to_vec()))
    }

    /// From 389-ds `nsUniqueId` (`xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx`): its 16 bytes.
    pub fn from_ns_unique_id(text: &str) -> Result<Anchor, ValueError> {
        let digits: String = text.trim().chars().filter(|c| *c != '-').collect();
        let bad = || ValueError::GuidText(text.to_string());
        if digits.len() != 32 {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(16);
        for i in 0..16 {
            let pair = digits.get(i * 2..i * 2 + 2).ok_or_else(bad)?;
            out.push(u8::from_str_radix(pair, 16).map_err(|_| bad())?);
        }
        Ok(Anchor(out))
    }

    /// From any other attribute value, used as is.
    pub fn from_bytes(bytes: &[u8]) -> Anchor {
        Anchor(bytes.to_vec())
    }

    /// The cloud-side immutableId: standard Base64 of the anchor bytes.
    pub fn immutable_id(&self) -> String {
        STANDARD.encode(&self.0)
    }

    /// Parses an immutableId back to the anchor bytes.
    pub fn from_immutable_id(text: &str) -> Option<Anchor> {
        STANDARD.decode(text.trim()).ok().map(Anchor)
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.immutable_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_id_of_ad_guid_is_base64_of_ad_bytes() {
        let guid = Guid::parse("6b29fc40-ca47-1067-b31d-00dd010662da").map(|g| g.0.to_vec()).unwrap_or_default();
        let anchor = Anchor::from_ad_guid(&guid).ok();
        assert_eq!(anchor.as_ref().map(Anchor::immutable_id), Some("QPwpa0fKZxCzHQDdAQZi2g==".to_string()));
        assert_eq!(anchor.as_ref().map(Anchor::immutable_id).and_then(|i| Anchor::from_immutable_id(&i)), anchor);
    }

    #[test]
    fn entry_uuid_and_nsuniqueid() {
        let a = Anchor::from_entry_uuid("6b29fc40-ca47-1067-b31d-00dd010662da").ok();
        assert_eq!(a.map(|a| a.0[0]), Some(0x6b));
        let n = Anchor::from_ns_unique_id("6b29fc40-ca471067-b31d00dd-010662da").ok();
        assert_eq!(n.map(|a| a.0.len()), Some(16));
        assert!(Anchor::from_ns_unique_id("zz").is_err());
    }
}
