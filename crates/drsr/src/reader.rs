//! Users' NT hashes, the way password hash sync needs them: one sealed,
//! bound session (endpoint mapper → NTLM packet privacy → DRSBind), then
//! one user at a time (`EXOP_REPL_OBJ`) or a whole naming context.

use std::fmt;
use std::time::Duration;

use crate::drsuapi::{self, ATT_OBJECT_SID, ATT_UNICODE_PWD, ChangesRequest, DrsHandle, ReplObject};
use crate::rpc::{Connection, Credentials};
use crate::{DRSUAPI, RpcError, secrets};

/// An NT hash as replicated. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NtSecret(pub [u8; 16]);

impl fmt::Debug for NtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NtSecret(…)")
    }
}

/// One security principal's password, as the DC holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSecret {
    pub dn: String,
    /// objectGUID, in the byte order LDAP shows it.
    pub guid: [u8; 16],
    /// `None`: no password is set.
    pub nt_hash: Option<NtSecret>,
}

/// Fault statuses a DC answers the first sealed call with when the NTLM
/// authentication failed (access denied; Samba: a protocol error).
const AUTH_FAULTS: [u32; 2] = [0x0000_0005, 0x1c01_000b];

/// A bound DRS session with a domain controller.
pub struct SecretReader {
    conn: Connection,
    handle: DrsHandle,
    session_key: [u8; 16],
}

impl fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretReader(…)")
    }
}

impl SecretReader {
    /// Finds the DRSUAPI port through the endpoint mapper on `host`, binds
    /// with NTLM at packet privacy as `credentials`, and calls DRSBind.
    pub async fn connect(host: &str, credentials: &Credentials, timeout: Duration) -> Result<SecretReader, RpcError> {
        let port = crate::epm::map(host, &DRSUAPI, timeout).await?;
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let mut conn = Connection::bind_sealed(&addr, &DRSUAPI, credentials, timeout).await?;
        let session_key =
            conn.session_key().ok_or_else(|| RpcError::Malformed("sealed bind (no session key)".into()))?;
        let (handle, _) = drsuapi::bind(&mut conn).await.map_err(|e| match e {
            RpcError::Fault(code) if AUTH_FAULTS.contains(&code) => {
                RpcError::AuthenticationFailed { user: credentials.user.clone() }
            }
            e => e,
        })?;
        Ok(SecretReader { conn, handle, session_key })
    }

    /// The password of the object `dn` (`EXOP_REPL_OBJ`); `None` if the DC
    /// does not know the object.
    pub async fn user(&mut self, dn: &str) -> Result<Option<UserSecret>, RpcError> {
        let request = ChangesRequest {
            dn: dn.to_string(),
            usn_from: (0, 0),
            flags: drsuapi::DRS_INIT_SYNC | drsuapi::DRS_WRIT_REP,
            max_objects: 1,
            max_bytes: 0,
            extended_op: drsuapi::EXOP_REPL_OBJ,
            attributes: vec![ATT_UNICODE_PWD, ATT_OBJECT_SID],
        };
        let reply = match drsuapi::get_nc_changes(&mut self.conn, self.handle, &request).await {
            Ok(reply) => reply,
            // The object does not exist (ERROR_DS_DRA_BAD_DN / OBJ_NOT_FOUND).
            Err(RpcError::Fault(0x20f7 | 0x2030 | 0x208d)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let wanted = dn.to_ascii_lowercase();
        match reply.objects.iter().find(|o| o.dn.to_ascii_lowercase() == wanted).or(reply.objects.first()) {
            Some(object) => Ok(Some(self.secret_of(object)?)),
            None => Ok(None),
        }
    }

    /// Every security principal of the naming context `nc` with its
    /// password, in rounds; returns where a later run could continue.
    pub async fn naming_context(&mut self, nc: &str, mut each: impl FnMut(UserSecret)) -> Result<(u64, u64), RpcError> {
        let key = self.session_key;
        let mut failure = None;
        let to = drsuapi::replicate(&mut self.conn, self.handle, nc, (0, 0), &[ATT_UNICODE_PWD, ATT_OBJECT_SID], |o| {
            if o.sid.is_empty() || failure.is_some() {
                return;
            }
            match secret_of(&key, &o) {
                Ok(secret) => each(secret),
                Err(e) => failure = Some(e),
            }
        })
        .await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(to),
        }
    }

    fn secret_of(&self, object: &ReplObject) -> Result<UserSecret, RpcError> {
        secret_of(&self.session_key, object)
    }

    /// DRSUnbind; the connection closes when dropped either way.
    pub async fn close(mut self) -> Result<(), RpcError> {
        drsuapi::unbind(&mut self.conn, self.handle).await
    }
}

fn secret_of(session_key: &[u8; 16], object: &ReplObject) -> Result<UserSecret, RpcError> {
    let encrypted = object.attrs.iter().find(|(id, _)| *id == ATT_UNICODE_PWD).and_then(|(_, v)| v.first());
    let nt_hash = match encrypted {
        None => None,
        Some(value) => {
            let rid_bytes = object
                .sid
                .len()
                .checked_sub(4)
                .and_then(|at| object.sid.get(at..))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .ok_or_else(|| RpcError::Malformed(format!("object {} (a password but no SID)", object.dn)))?;
            let inner = secrets::decrypt_secret(session_key, value)?;
            Some(NtSecret(secrets::nt_hash_from_rid_encrypted(&inner, u32::from_le_bytes(rid_bytes))?))
        }
    };
    Ok(UserSecret { dn: object.dn.clone(), guid: object.guid, nt_hash })
}
