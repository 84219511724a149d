//! Attribute values (text or binary), and the two AD binary types that people
//! read as text: objectGUID and objectSid.

use std::fmt;

/// One attribute value. Which attributes are binary is decided by
/// [`is_binary_attribute`]; a value that is not valid UTF-8 is kept as binary
/// whatever its attribute, so nothing is ever lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Text(String),
    Binary(Vec<u8>),
}

impl Value {
    /// Builds a value from raw bytes read off the wire for attribute `attr`.
    pub fn from_bytes(attr: &str, bytes: Vec<u8>) -> Value {
        Value::from_bytes_as(is_binary_attribute(attr), bytes)
    }

    /// Like [`Value::from_bytes`] when the caller already knows whether the
    /// attribute is binary (decided once per attribute, not per value).
    pub fn from_bytes_as(binary: bool, bytes: Vec<u8>) -> Value {
        if binary {
            return Value::Binary(bytes);
        }
        match String::from_utf8(bytes) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Binary(e.into_bytes()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Text(s) => s.as_bytes(),
            Value::Binary(b) => b,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Binary(_) => None,
        }
    }

    pub fn is_binary(&self) -> bool {
        matches!(self, Value::Binary(_))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

/// Attributes whose values are octet strings, not text, in AD, OpenLDAP and 389.
const BINARY_ATTRIBUTES: &[&str] = &[
    "objectguid",
    "objectsid",
    "ms-ds-consistencyguid",
    "msds-consistencyguid",
    "jpegphoto",
    "thumbnailphoto",
    "thumbnaillogo",
    "usercertificate",
    "cacertificate",
    "crosscertificatepair",
    "certificaterevocationlist",
    "authorityrevocationlist",
    "usersmimecertificate",
    "usercert",
    "userpkcs12",
    "sidhistory",
    "tokengroups",
    "msexchmasteraccountsid",
    "msexchmailboxguid",
    "msexcharchiveguid",
    "ntsecuritydescriptor",
    "logonhours",
    "audio",
    "photo",
    "unicodepwd",
    "dbcspwd",
    "ntpwdhistory",
    "lmpwdhistory",
    "supplementalcredentials",
    "msds-generationid",
    "replpropertymetadata",
    "repluptodatevector",
    "repsfrom",
    "repsto",
    "invocationid",
    "mssfu30passwordhistory",
];

/// True if values of `attr` are binary. Any attribute with the `;binary`
/// option is binary (RFC 4522).
pub fn is_binary_attribute(attr: &str) -> bool {
    let mut parts = attr.split(';');
    let base = parts.next().unwrap_or_default();
    parts.any(|o| o.eq_ignore_ascii_case("binary")) || BINARY_ATTRIBUTES.iter().any(|b| b.eq_ignore_ascii_case(base))
}

/// Why a GUID or SID could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a GUID has 16 bytes, this value has {0}")]
    GuidLength(usize),
    #[error("{0:?} is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    GuidText(String),
    #[error("binary SID is malformed: {0}")]
    SidBinary(&'static str),
    #[error("{0:?} is not a SID (expected S-1-<authority>-<sub-authority>…)")]
    SidText(String),
}

/// A GUID kept in the byte order AD stores in `objectGUID`: the first three
/// fields little-endian, the last eight bytes as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the 16 bytes of an `objectGUID` value.
    pub fn from_ad_bytes(bytes: &[u8]) -> Result<Guid, ValueError> {
        let arr: [u8; 16] = bytes.try_into().map_err(|_| ValueError::GuidLength(bytes.len()))?;
        Ok(Guid(arr))
    }

    /// Parses the canonical text form, with or without braces.
    pub fn parse(text: &str) -> Result<Guid, ValueError> {
        let bad = || ValueError::GuidText(text.to_string());
        let t = text.trim();
        let t = t.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(t).as_bytes();
        if t.len() != 36 || [8, 13, 18, 23].iter().any(|&i| t[i] != b'-') {
            return Err(bad());
        }
        let mut big_endian = [0u8; 16];
        let mut digits = t.iter().filter(|&&c| c != b'-');
        for slot in &mut big_endian {
            let (Some(&h), Some(&l)) = (digits.next(), digits.next()) else { return Err(bad()) };
            let (Some(h), Some(l)) = ((h as char).to_digit(16), (l as char).to_digit(16)) else { return Err(bad()) };
            *slot = (h * 16 + l) as u8;
        }
        Ok(Guid::from_rfc4122_bytes(big_endian))
    }

    /// From the 16 bytes of an RFC 4122 (big-endian) UUID.
    pub fn from_rfc4122_bytes(be: [u8; 16]) -> Guid {
        let mut ad = be;
        ad[0..4].reverse();
        ad[4..6].reverse();
        ad[6..8].reverse();
        Guid(ad)
    }

    /// The RFC 4122 (big-endian) byte order, as used by OpenLDAP's entryUUID.
    pub fn to_rfc4122_bytes(self) -> [u8; 16] {
        let mut be = self.0;
        be[0..4].reverse();
        be[4..6].reverse();
        be[6..8].reverse();
        be
    }

    pub fn ad_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_rfc4122_bytes();
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A Windows security identifier (`objectSid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sid {
    pub revision: u8,
    pub authority: u64,
    pub sub_authorities: Vec<u32>,
}

impl Sid {
    /// Decodes the binary form: revision, count, 48-bit big-endian authority,
    /// then `count` little-endian 32-bit sub-authorities.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sid, ValueError> {
        let (&revision, rest) = bytes.split_first().ok_or(ValueError::SidBinary("empty"))?;
        let (&count, rest) = rest.split_first().ok_or(ValueError::SidBinary("no sub-authority count"))?;
        if count > 15 {
            return Err(ValueError::SidBinary("more than 15 sub-authorities"));
        }
        let (auth, subs) = rest.split_at_checked(6).ok_or(ValueError::SidBinary("authority truncated"))?;
        if subs.len() != usize::from(count) * 4 {
            return Err(ValueError::SidBinary("length does not match the sub-authority count"));
        }
        let authority = auth.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
        let sub_authorities = subs.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(Sid { revision, authority, sub_authorities })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * self.sub_authorities.len());
        out.push(self.revision);
        out.push(self.sub_authorities.len() as u8);
        out.extend_from_slice(&self.authority.to_be_bytes()[2..]);
        for s in &self.sub_authorities {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    /// Parses `S-1-5-21-…`.
    pub fn parse(text: &str) -> Result<Sid, ValueError> {
        let bad = || ValueError::SidText(text.to_string());
        let mut parts = text.trim().split('-');
        if !parts.next().is_some_and(|p| p.eq_ignore_ascii_case("s")) {
            return Err(bad());
        }
        let revision: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let authority_text = parts.next().ok_or_else(bad)?;
        let authority = match authority_text.strip_prefix("0x").or_else(|| authority_text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad())?,
            None => authority_text.parse().map_err(|_| bad())?,
        };
        if authority >= 1 << 48 {
            return Err(bad());
        }
        let sub_authorities = parts.map(|p| p.parse::<u32>().map_err(|_| bad())).collect::<Result<Vec<_>, _>>()?;
        if sub_authorities.len() > 15 {
            return Err(bad());
        }
        Ok(Sid { revision, authority, sub_authorities })
    }

    /// The relative identifier (last sub-authority).
    pub fn rid(&self) -> Option<u32> {
        self.sub_authorities.last().copied()
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-{}-", self.revision)?;
        if self.authority >= 1 << 32 {
            write!(f, "0x{:012X}", self.authority)?;
        } else {
            write!(f, "{}", self.authority)?;
        }
        for s in &self.sub_authorities {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_ad_byte_order() {
        // Example from MS-DTYP: the GUID {6B29FC40-CA47-1067-B31D-00DD010662DA}.
        let ad = [0x40, 0xFC, 0x29, 0x6B, 0x47, 0xCA, 0x67, 0x10, 0xB3, 0x1D, 0x00, 0xDD, 0x01, 0x06, 0x62, 0xDA];
        let g = Guid::from_ad_bytes(&ad).ok();
        assert_eq!(g.map(|g| g.to_string()), Some("6b29fc40-ca47-1067-b31d-00dd010662da".into()));
        assert_eq!(Guid::parse("{6B29FC40-CA47-1067-B31D-00DD010662DA}").ok(), g);
        assert!(Guid::from_ad_bytes(&ad[..15]).is_err());
        assert!(Guid::parse("6b29fc40-ca47-1067-b31d-00dd010662dz").is_err());
        assert!(Guid::parse("ü6b29fc4-ca47-1067-b31d-00dd010662da").is_err());
    }

    #[test]
    fn sid_round_trip() {
        let text = "S-1-5-21-3623811015-3361044348-30300820-1013";
        let sid = Sid::parse(text).ok();
        let bytes = sid.as_ref().map(Sid::to_bytes).unwrap_or_default();
        assert_eq!(bytes.len(), 28);
        assert_eq!(Sid::from_bytes(&bytes).ok(), sid);
        assert_eq!(sid.map(|s| s.to_string()), Some(text.to_string()));
        assert_eq!(Sid::parse("S-1-5-32-544").ok().and_then(|s| s.rid()), Some(544));
        assert!(Sid::from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 1]).is_err());
        assert!(Sid::from_bytes(&[]).is_err());
        assert!(Sid::parse("X-1-5").is_err());
    }

    #[test]
    fn binary_detection() {
        assert!(is_binary_attribute("objectGUID"));
        assert!(is_binary_attribute("userCertificate;binary"));
        assert!(is_binary_attribute("mS-DS-ConsistencyGuid"));
        assert!(!is_binary_attribute("cn"));
        assert_eq!(Value::from_bytes("description", vec![0xff, 0x00]), Value::Binary(vec![0xff, 0]));
        assert_eq!(Value::from_bytes("cn", b"x".to_vec()), Value::Text("x".into()));
    }
}
