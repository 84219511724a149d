//! The connector's watermark: which delta mechanism, its cookie or USN, and a
//! fingerprint of the import scope (a changed scope makes it invalid).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sync::Watermark;

use crate::error::LdapError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum DeltaPosition {
    /// AD DirSync cookie (base64).
    DirSync { cookie: String },
    /// AD uSNChanged high-water mark on one DC (USNs are per DC).
    Usn { usn: u64, server: String },
    /// RFC 4533 cookies, one per base DN.
    Syncrepl { cookies: Vec<BaseCookie> },
    /// The server offers no change tracking: every import is full.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseCookie {
    pub base: String,
    pub cookie: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: u32,
    /// Fingerprint of bases, OUs, filter and attributes.
    pub scope: String,
    /// The configured OUs pinned by id (see `ous`); set by `LdapSource` after
    /// the delta mechanism has produced the position.
    #[serde(default)]
    pub ous: Vec<crate::ous::PinnedOu>,
    #[serde(flatten)]
    pub position: DeltaPosition,
}

impl Mark {
    pub fn encode(&self) -> Watermark {
        Watermark(serde_json::to_string(self).unwrap_or_default())
    }

    pub fn decode(w: &Watermark) -> Result<Mark, LdapError> {
        let mark: Mark = serde_json::from_str(&w.0).map_err(|e| LdapError::Watermark(e.to_string()))?;
        if mark.version != 1 {
            return Err(LdapError::Watermark(format!("version {} is not supported", mark.version)));
        }
        Ok(mark)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Result<Vec<u8>, LdapError> {
    STANDARD.decode(text).map_err(|e| LdapError::Watermark(format!("cookie is not base64: {e}")))
}

/// FNV-1a over the parts: stable across builds and Rust versions.
pub fn fingerprint(parts: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
