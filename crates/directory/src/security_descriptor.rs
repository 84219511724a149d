//! The discretionary ACL of a Windows security descriptor as AD stores it in
//! `nTSecurityDescriptor` (self-relative form, MS-DTYP 2.4.6): enough to ask
//! whether it grants an extended ("control access") right, such as Reset
//! Password, to an account and its groups. `idbridge init` asks this before
//! password writeback is switched on, so a missing right is a line to run,
//! not a refused reset later.
//!
//! The value comes from the server, so it is parsed as hostile input: every
//! offset and length is checked against the bytes, the ACEs are read in one
//! loop (no recursion), and ACE types other than the four access ACEs
//! (audit, callback, …) are stepped over by their size.

use crate::value::{Guid, Sid};

/// Why a security descriptor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("security descriptor is malformed: {0}")]
pub struct DescriptorError(&'static str);

/// The header's "a DACL is present" bit (SE_DACL_PRESENT).
const DACL_PRESENT: u16 = 0x0004;
/// ACE types (MS-DTYP 2.4.4.1).
const ACCESS_ALLOWED: u8 = 0x00;
const ACCESS_DENIED: u8 = 0x01;
const ACCESS_ALLOWED_OBJECT: u8 = 0x05;
const ACCESS_DENIED_OBJECT: u8 = 0x06;
/// The ACE is only handed down, it does not apply to this object.
const INHERIT_ONLY: u8 = 0x08;
/// Object ACE flags: which GUIDs follow the mask.
const OBJECT_TYPE_PRESENT: u32 = 0x1;
const INHERITED_OBJECT_TYPE_PRESENT: u32 = 0x2;
/// ADS_RIGHT_DS_CONTROL_ACCESS: extended rights (one, or all without an object type).
pub const CONTROL_ACCESS: u32 = 0x0000_0100;
/// GENERIC_ALL, in case a stored ACE was not mapped to specific rights.
const GENERIC_ALL: u32 = 0x1000_0000;

/// The extended right "Reset Password" (User-Force-Change-Password).
pub const RESET_PASSWORD: Guid =
    Guid([0x70, 0x95, 0x29, 0x00, 0x6d, 0x24, 0xd0, 0x11, 0xa7, 0x68, 0x00, 0xaa, 0x00, 0x6e, 0x05, 0x29]);
/// The schemaIDGUID of the `user` class (inherited object type of ACEs meant for users).
pub const USER_CLASS: Guid =
    Guid([0xba, 0x7a, 0x96, 0xbf, 0xe6, 0x0d, 0xd0, 0x11, 0xa2, 0x85, 0x00, 0xaa, 0x00, 0x30, 0x49, 0xe2]);

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AceKind {
    Allow,
    Deny,
}

/// One access-allowed or access-denied ACE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    pub kind: AceKind,
    /// Handed down to children only; it does not apply to this object.
    pub inherit_only: bool,
    pub mask: u32,
    /// The right, property or property set the ACE is about (object ACEs).
    pub object_type: Option<Guid>,
    /// The class of object the ACE applies to (object ACEs).
    pub inherited_object_type: Option<Guid>,
    pub sid: Sid,
}

/// A DACL, in its order (the order decides: the first ACE that speaks wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dacl {
    /// No DACL at all: Windows grants every access.
    Null,
    Aces(Vec<Ace>),
}

impl Dacl {
    /// Whether the extended right `right` is granted, on an object of class
    /// `class`, to a caller holding `sids` (the account, its groups, and
    /// Everyone / Authenticated Users): the first applicable ACE decides,
    /// as Windows checks a single right; none means denied.
    pub fn grants_control_access(&self, right: &Guid, class: &Guid, sids: &[Sid]) -> bool {
        let Dacl::Aces(aces) = self else { return true };
        for ace in aces {
            let grants_it = ace.mask & (CONTROL_ACCESS | GENERIC_ALL) != 0
                && ace.object_type.as_ref().is_none_or(|t| t == right)
                && ace.inherited_object_type.as_ref().is_none_or(|c| c == class);
            if grants_it && !ace.inherit_only && sids.contains(&ace.sid) {
                return ace.kind == AceKind::Allow;
            }
        }
        false
    }
}

/// Little-endian readers over checked ranges.
fn bytes_at(data: &[u8], at: usize, len: usize) -> Result<&[u8], DescriptorError> {
    data.get(at..at.checked_add(len).ok_or(DescriptorError("offset overflows"))?).ok_or(DescriptorError("truncated"))
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, DescriptorError> {
    let b = bytes_at(data, at, 2)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, DescriptorError> {
    let b = bytes_at(data, at, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn guid_at(data: &[u8], at: usize) -> Result<Guid, DescriptorError> {
    Guid::from_ad_bytes(bytes_at(data, at, 16)?).map_err(|_| DescriptorError("GUID truncated"))
}

/// A SID at `at` within `data` (its length comes from its count).
fn sid_at(data: &[u8], at: usize) -> Result<Sid, DescriptorError> {
    let count = *bytes_at(data, at + 1, 1)?.first().ok_or(DescriptorError("SID truncated"))?;
    let len = 8 + 4 * usize::from(count);
    Sid::from_bytes(bytes_at(data, at, len)?).map_err(|_| DescriptorError("SID malformed"))
}

/// The DACL of a self-relative security descriptor (`nTSecurityDescriptor`).
pub fn parse_dacl(descriptor: &[u8]) -> Result<Dacl, DescriptorError> {
    if *descriptor.first().ok_or(DescriptorError("empty"))? != 1 {
        return Err(DescriptorError("revision is not 1"));
    }
    let control = u16_at(descriptor, 2)?;
    let offset = usize::try_from(u32_at(descriptor, 16)?).map_err(|_| DescriptorError("offset overflows"))?;
    if control & DACL_PRESENT == 0 || offset == 0 {
        return Ok(Dacl::Null);
    }
    let acl_size = usize::from(u16_at(descriptor, offset + 2)?);
    let count = u16_at(descriptor, offset + 4)?;
    let acl = bytes_at(descriptor, offset, acl_size)?;
    let mut aces = Vec::new();
    let mut at = 8;
    for _ in 0..count {
        let header = bytes_at(acl, at, 4)?;
        let (kind, flags) = (header[0], header[1]);
        let size = usize::from(u16_at(acl, at + 2)?);
        if size < 8 {
            return Err(DescriptorError("ACE shorter than its header"));
        }
        let ace = bytes_at(acl, at, size)?;
        let mask = u32_at(ace, 4)?;
        let decoded = match kind {
            ACCESS_ALLOWED | ACCESS_DENIED => Some((None, None, sid_at(ace, 8)?)),
            ACCESS_ALLOWED_OBJECT | ACCESS_DENIED_OBJECT => {
                let present = u32_at(ace, 8)?;
                let mut next = 12;
                let mut guid = |bit: u32| -> Result<Option<Guid>, DescriptorError> {
                    if present & bit == 0 {
                        return Ok(None);
                    }
                    let g = guid_at(ace, next)?;
                    next += 16;
                    Ok(Some(g))
                };
                let (object, inherited) = (guid(OBJECT_TYPE_PRESENT)?, guid(INHERITED_OBJECT_TYPE_PRESENT)?);
                Some((object, inherited, sid_at(ace, next)?))
            }
            // Audit, alarm and callback ACEs grant nothing.
            _ => None,
        };
        if let Some((object_type, inherited_object_type, sid)) = decoded {
            aces.push(Ace {
                kind: if matches!(kind, ACCESS_DENIED | ACCESS_DENIED_OBJECT) { AceKind::Deny } else { AceKind::Allow },
                inherit_only: flags & INHERIT_ONLY != 0,
                mask,
                object_type,
                inherited_object_type,
                sid,
            });
        }
        at += size;
    }
    Ok(Dacl::Aces(aces))
}

/// Everyone (S-1-1-0) and Authenticated Users (S-1-5-11): every bound
/// account holds them besides its own SID and groups.
pub fn implicit_sids() -> [Sid; 2] {
    [
        Sid { revision: 1, authority: 1, sub_authorities: vec![0] },
        Sid { revision: 1, authority: 5, sub_authorities: vec![11] },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ace(kind: u8, flags: u8, mask: u32, object: Option<Guid>, class: Option<Guid>, sid: &Sid) -> Vec<u8> {
        let mut body = mask.to_le_bytes().to_vec();
        if kind >= ACCESS_ALLOWED_OBJECT {
            let present = u32::from(object.is_some()) | (u32::from(class.is_some()) << 1);
            body.extend(present.to_le_bytes());
            for g in [object, class].into_iter().flatten() {
                body.extend(g.0);
            }
        }
        body.extend(sid.to_bytes());
        let mut out = vec![kind, flags];
        out.extend(u16::try_from(body.len() + 4).unwrap().to_le_bytes());
        out.extend(body);
        out
    }

    fn descriptor(aces: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = aces.concat();
        let mut acl = vec![4, 0];
        acl.extend(u16::try_from(body.len() + 8).unwrap().to_le_bytes());
        acl.extend(u16::try_from(aces.len()).unwrap().to_le_bytes());
        acl.extend([0, 0]);
        acl.extend(body);
        let mut sd = vec![1, 0];
        sd.extend((DACL_PRESENT | 0x8000).to_le_bytes());
        sd.extend([0u8; 12]);
        sd.extend(20u32.to_le_bytes());
        sd.extend(acl);
        sd
    }

    fn sid(text: &str) -> Sid {
        Sid::parse(text).unwrap()
    }

    #[test]
    fn the_guids_are_the_rights_they_name() {
        assert_eq!(RESET_PASSWORD.to_string(), "00299570-246d-11d0-a768-00aa006e0529");
        assert_eq!(USER_CLASS.to_string(), "bf967aba-0de6-11d0-a285-00aa003049e2");
    }

    #[test]
    fn the_first_applicable_ace_decides() {
        let (svc, helpdesk, other) = (sid("S-1-5-21-1-2-3-1105"), sid("S-1-5-21-1-2-3-1200"), sid("S-1-5-21-1-2-3-9"));
        let reset = Some(RESET_PASSWORD);
        let change = Some(Guid::parse("ab721a53-1e2f-11d0-9819-00aa0040529b").unwrap());
        let holder = [svc.clone(), helpdesk.clone()];
        let check = |aces: &[Vec<u8>]| {
            parse_dacl(&descriptor(aces)).unwrap().grants_control_access(&RESET_PASSWORD, &USER_CLASS, &holder)
        };
        // Granted to a group the account is in, for users.
        assert!(check(&[ace(ACCESS_ALLOWED_OBJECT, 0x10, CONTROL_ACCESS, reset, Some(USER_CLASS), &helpdesk)]));
        // Only another right, only someone else, only handed down, only for other classes, only reading.
        let computer = Some(Guid::parse("bf967a86-0de6-11d0-a285-00aa003049e2").unwrap());
        for not_it in [
            ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, change, None, &svc),
            ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, reset, None, &other),
            ace(ACCESS_ALLOWED_OBJECT, INHERIT_ONLY, CONTROL_ACCESS, reset, None, &svc),
            ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, reset, computer, &svc),
            ace(ACCESS_ALLOWED, 0, 0x0002_0094, None, None, &svc),
        ] {
            assert!(!check(&[not_it]));
        }
        // All extended rights (no object type), and full control, include it.
        assert!(check(&[ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, None, None, &svc)]));
        assert!(check(&[ace(ACCESS_ALLOWED, 0, 0x000F_01FF, None, None, &helpdesk)]));
        // A deny before the allow wins; after it, it comes too late.
        let deny = ace(ACCESS_DENIED_OBJECT, 0, CONTROL_ACCESS, reset, None, &svc);
        let allow = ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, reset, None, &helpdesk);
        assert!(!check(&[deny.clone(), allow.clone()]));
        assert!(check(&[allow, deny]));
        // Audit ACEs are stepped over; no DACL grants everything.
        let audit = ace(0x02, 0x40, CONTROL_ACCESS, None, None, &svc);
        assert!(!check(&[audit]));
        let mut none = descriptor(&[]);
        none[2] = 0;
        assert_eq!(parse_dacl(&none).unwrap(), Dacl::Null);
    }

    #[test]
    fn malformed_descriptors_are_errors() {
        let good = descriptor(&[ace(ACCESS_ALLOWED, 0, CONTROL_ACCESS, None, None, &sid("S-1-5-11"))]);
        assert!(parse_dacl(&good).is_ok());
        for cut in 0..good.len() {
            assert!(parse_dacl(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut zero_size = good.clone();
        zero_size[20 + 8 + 2] = 0;
        zero_size[20 + 8 + 3] = 0;
        assert!(parse_dacl(&zero_size).is_err());
        let mut far = good.clone();
        far[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_dacl(&far).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_dacl(&bytes);
        }

        #[test]
        fn mutated_descriptors_never_panic(at in 0usize..80, byte in any::<u8>(), text in "\\PC{0,8}") {
            let mut sd = descriptor(&[
                ace(ACCESS_ALLOWED_OBJECT, 0, CONTROL_ACCESS, Some(RESET_PASSWORD), Some(USER_CLASS), &sid("S-1-5-21-9-9-9-1000")),
                ace(ACCESS_DENIED, 0, 1, None, None, &sid("S-1-1-0")),
            ]);
            if let Some(slot) = sd.get_mut(at) { *slot = byte; }
            // Non-ASCII text where a GUID or SID should be.
            sd.extend(text.as_bytes());
            let _ = parse_dacl(&sd);
        }
    }
}
