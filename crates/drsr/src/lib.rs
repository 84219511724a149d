//! A client for Active Directory's replication protocol (MS-DRSR), the only
//! way AD hands out password hashes, over connection-oriented DCE/RPC
//! (MS-RPCE, C706) on TCP.
//!
//! - [`ndr`]: NDR 2.0 encoding and decoding (little-endian, aligned, bounded).
//! - [`pdu`]: the connection-oriented PDUs (bind, request, response, fault).
//! - [`rpc`]: a connection: bind an interface, call an operation, reassemble fragments.
//! - [`epm`]: the endpoint mapper (`ept_map`): which TCP port serves an interface.
//! - [`ntlm`]: NTLMv2 authentication and packet privacy (sealing, signing).
//! - [`drsuapi`]: `IDL_DRSBind`, `IDL_DRSGetNCChanges` (whole naming context
//!   in rounds, or one object with `EXOP_REPL_OBJ`), `IDL_DRSUnbind`.
//! - [`secrets`]: the two layers of `unicodePwd` encryption (session key +
//!   salt MD5/RC4 with CRC32; RID-keyed DES).
//! - [`reader`]: what password hash sync uses: users' NT hashes.

pub mod drsuapi;
pub mod epm;
pub mod ndr;
pub mod ntlm;
pub mod pdu;
pub mod reader;
pub mod rpc;
pub mod secrets;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent a malformed {0}")]
    Malformed(String),
    #[error("the server refused the bind to the interface (result {result}, reason {reason})")]
    BindRefused { result: u16, reason: u16 },
    #[error("the call failed on the server (fault status 0x{0:08x})")]
    Fault(u32),
    #[error("the endpoint mapper knows no TCP endpoint for the interface (status 0x{0:08x})")]
    NotRegistered(u32),
    #[error("the server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error(
        "the domain controller did not accept the credentials of {user:?} (NTLM): check the password file, \
         and that the account is enabled, not locked out and its password not expired"
    )]
    AuthenticationFailed { user: String },
    #[error(
        "the domain controller has outbound replication disabled (DISABLE_OUTBOUND_REPL), so it hands out no \
         changes: enable it again (Windows: repadmin /options <DC> -DISABLE_OUTBOUND_REPL; Samba: samba-tool drs \
         options --dsa-option=-DISABLE_OUTBOUND_REPL) or point the source at another DC"
    )]
    OutboundReplicationDisabled,
    #[error(
        "the account may not replicate secrets: it needs the extended rights \"Replicating Directory Changes\" \
         ({REPLICATING_CHANGES}) and \"Replicating Directory Changes All\" ({REPLICATING_CHANGES_ALL}) on the \
         domain's naming context (grant them with dsacls on Windows, samba-tool dsacl on Samba)"
    )]
    ReplicationDenied,
}

/// The extended right "Replicating Directory Changes" (DS-Replication-Get-Changes).
pub const REPLICATING_CHANGES: &str = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2";
/// The extended right "Replicating Directory Changes All" (DS-Replication-Get-Changes-All): secrets.
pub const REPLICATING_CHANGES_ALL: &str = "1131f6ad-9c07-11d1-f79f-00c04fc2dcd2";

/// An RPC interface or transfer syntax: UUID and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    pub uuid: [u8; 16],
    pub major: u16,
    pub minor: u16,
}

impl Syntax {
    /// From the textual UUID (`e1af8308-5d1f-11c9-91a4-08002b14a0fa`), in the
    /// wire order (the first three fields little-endian).
    pub const fn new(text: &str, major: u16, minor: u16) -> Syntax {
        let b = text.as_bytes();
        let mut hex = [0u8; 16];
        let mut i = 0;
        let mut j = 0;
        while i < b.len() && j < 32 {
            let c = b[i];
            let v = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            if let Some(v) = v {
                if j % 2 == 0 {
                    hex[j / 2] = v << 4;
                } else {
                    hex[j / 2] |= v;
                }
                j += 1;
            }
            i += 1;
        }
        let uuid = [
            hex[3], hex[2], hex[1], hex[0], hex[5], hex[4], hex[7], hex[6], hex[8], hex[9], hex[10], hex[11], hex[12],
            hex[13], hex[14], hex[15],
        ];
        Syntax { uuid, major, minor }
    }
}

/// NDR 2.0, the transfer syntax every call here uses.
pub const NDR: Syntax = Syntax::new("8a885d04-1ceb-11c9-9fe8-08002b104860", 2, 0);
/// DRSUAPI, the replication interface.
pub const DRSUAPI: Syntax = Syntax::new("e3514235-4b06-11d1-ab04-00c04fc2dcd2", 4, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_in_wire_order() {
        assert_eq!(
            NDR.uuid,
            [0x04, 0x5d, 0x88, 0x8a, 0xeb, 0x1c, 0xc9, 0x11, 0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60]
        );
    }
}
