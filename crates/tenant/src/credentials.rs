//! Password records of synchronised users (password hash sync).
//! A record is what the sync side sent: a PPH1 record derived from the NT
//! hash, or a `userPassword` value carried as it is. Raw NT hashes are refused.

use crate::db::{Connection, OptionalExtension, params};
use passwords::{Pph1, StoredPassword};
use serde_json::json;

use crate::audit;
use crate::error::Result;
use crate::objects::Kind;
use crate::util::now;

/// A parsed record, ready to verify.
#[derive(Debug, Clone)]
pub enum Credential {
    Pph1(Pph1),
    Stored(StoredPassword),
}

impl Credential {
    pub fn parse(record: &str) -> std::result::Result<Credential, passwords::PasswordError> {
        if record.starts_with("v1;PPH1_MD4,") {
            Pph1::parse(record).map(Credential::Pph1)
        } else {
            StoredPassword::parse(record.as_bytes()).map(Credential::Stored)
        }
    }

    /// Whether checking this record costs at least what the decoy for
    /// unknown users costs (PPH1 at the default work factor). Cheaper ones
    /// are padded with the decoy, so timing does not tell users apart.
    pub fn costs_at_least_the_decoy(&self) -> bool {
        use passwords::StoredPassword;
        let default = passwords::pph1::DEFAULT_ITERATIONS;
        match self {
            Credential::Pph1(r) => r.iterations.get() >= default,
            Credential::Stored(StoredPassword::Pbkdf2 { iterations, .. }) => iterations.get() >= default,
            Credential::Stored(StoredPassword::Argon2(_)) => true,
            Credential::Stored(StoredPassword::Crypt(c)) => c.starts_with("$2"),
            Credential::Stored(StoredPassword::Digest { .. }) => false,
        }
    }

    /// Records the tenant stores: strong enough to be worth keeping (PBKDF2
    /// at least Connect's 1,000 iterations, a salt of 8 bytes or more) and
    /// cheap enough that one sign-in cannot tie up a core (each record is
    /// verified at every sign-in of its user).
    pub fn within_cost_window(&self) -> std::result::Result<(), String> {
        use passwords::StoredPassword;
        const MIN_ITERATIONS: u32 = 1_000;
        const MAX_ITERATIONS: u32 = 1_000_000;
        let iterations = |n: u32| {
            if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n) {
                Ok(())
            } else {
                Err(format!("{n} iterations is outside {MIN_ITERATIONS}–{MAX_ITERATIONS}"))
            }
        };
        match self {
            Credential::Pph1(r) if r.salt.len() < 8 => Err("the salt is shorter than 8 bytes".into()),
            Credential::Pph1(r) => iterations(r.iterations.get()),
            Credential::Stored(StoredPassword::Pbkdf2 { salt, .. }) if salt.len() < 8 => {
                Err("the salt is shorter than 8 bytes".into())
            }
            Credential::Stored(StoredPassword::Pbkdf2 { iterations: n, .. }) => iterations(n.get()),
            Credential::Stored(StoredPassword::Argon2(phc)) => {
                let param = |name: &str| -> Option<u32> {
                    phc.split('$')
                        .flat_map(|part| part.split(','))
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                };
                match (param("m"), param("t")) {
                    (Some(m), Some(t)) if m <= 65_536 && t <= 10 => Ok(()),
                    _ => Err("Argon2 costs above 64 MiB or 10 passes are not accepted".into()),
                }
            }
            Credential::Stored(StoredPassword::Crypt(c)) => {
                let rounds = c.split('$').find_map(|p| p.strip_prefix("rounds=")).and_then(|r| r.parse::<u32>().ok());
                let bcrypt_cost =
                    c.strip_prefix("$2").and_then(|r| r.split('$').nth(1)).and_then(|n| n.parse::<u32>().ok());
                match (rounds, bcrypt_cost) {
                    (Some(r), _) if r > MAX_ITERATIONS => Err(format!("{r} rounds is more than {MAX_ITERATIONS}")),
                    (_, Some(cost)) if cost > 14 => Err(format!("bcrypt cost {cost} is more than 14")),
                    _ => Ok(()),
                }
            }
            // Unsalted and salted SHA digests are what OpenLDAP stores by
            // default; they are kept, and padded at sign-in (see signin).
            Credential::Stored(StoredPassword::Digest { .. }) => Ok(()),
        }
    }

    /// Constant-time where it matters; costs what the record's work factor says.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Credential::Pph1(r) => r.verify(password),
            Credential::Stored(s) => s.verify(password),
        }
    }
}

pub use proto::hybrid::{CredentialResult, CredentialStatus, CredentialUpdate};

/// Applies a batch in one transaction; each item gets its own result (one
/// bad record never rejects the others). The audit log names the users, never the records.
pub fn apply_batch(
    conn: &mut Connection,
    actor: &str,
    allowed_domains: Option<&[String]>,
    batch: &[CredentialUpdate],
) -> Result<Vec<CredentialResult>> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    for item in batch {
        let result = |status, detail: Option<String>| CredentialResult {
            immutable_id: item.immutable_id.clone(),
            status,
            detail,
        };
        // The id and userName only: the object itself is not read.
        let user: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT id, user_name_lc FROM resources WHERE immutable_id = ?1 AND type = ?2",
                params![item.immutable_id, Kind::User.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((user_id, user_name)) = user else {
            results
                .push(result(CredentialStatus::UnknownUser, Some("no synchronised user has this immutableId".into())));
            continue;
        };
        if let Some(allowed) = allowed_domains {
            let domain = user_name.as_deref().and_then(|n| n.rsplit_once('@')).map(|(_, d)| d.to_string());
            if !domain.is_some_and(|d| allowed.contains(&d)) {
                results.push(result(
                    CredentialStatus::Forbidden,
                    Some("this token may not set passwords in the user's domain".into()),
                ));
                continue;
            }
        }
        if item.remove {
            tx.execute("DELETE FROM credentials WHERE resource_id = ?1", params![user_id])?;
            end_sign_ins(&tx, &user_id)?;
            audit::record(&tx, actor, "password-removed", Some("User"), Some(&user_id), None)?;
            results.push(result(CredentialStatus::Removed, None));
            continue;
        }
        let Some(record) = item.record.as_deref() else {
            results.push(result(CredentialStatus::Invalid, Some("a record (or remove: true) is required".into())));
            continue;
        };
        match Credential::parse(record).map_err(|e| e.to_string()).and_then(|c| c.within_cost_window()) {
            Ok(()) => {}
            Err(why) => {
                results.push(result(CredentialStatus::Invalid, Some(why)));
                continue;
            }
        }
        tx.execute(
            "INSERT INTO credentials(resource_id, record, must_change, updated) VALUES(?1, ?2, ?3, ?4)
             ON CONFLICT(resource_id) DO UPDATE SET record = excluded.record, must_change = excluded.must_change,
             updated = excluded.updated",
            params![user_id, record, item.must_change_password, now()],
        )?;
        end_sign_ins(&tx, &user_id)?;
        audit::record(
            &tx,
            actor,
            "password-synchronised",
            Some("User"),
            Some(&user_id),
            Some(&json!({"mustChangePassword": item.must_change_password})),
        )?;
        results.push(result(CredentialStatus::Stored, None));
    }
    tx.commit()?;
    Ok(results)
}

/// The stored record of a user and whether a new password is due.
pub fn load(conn: &Connection, user_id: &str) -> Result<Option<(String, bool)>> {
    Ok(conn
        .query_row("SELECT record, must_change FROM credentials WHERE resource_id = ?1", params![user_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// Replaces a user's record after a password change in the cloud.
pub fn set(conn: &Connection, user_id: &str, record: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO credentials(resource_id, record, must_change, updated) VALUES(?1, ?2, 0, ?3)
         ON CONFLICT(resource_id) DO UPDATE SET record = excluded.record, must_change = 0, updated = excluded.updated",
        params![user_id, record, now()],
    )?;
    end_sign_ins(conn, user_id)
}

/// A changed credential ends what the old one started: the user's browser
/// sessions and refresh tokens (issued access tokens run out within their
/// hour).
pub fn end_sign_ins(conn: &Connection, user_id: &str) -> Result<()> {
    conn.execute("DELETE FROM sessions WHERE user_id = ?1", params![user_id])?;
    conn.execute("DELETE FROM refresh_tokens WHERE user_id = ?1", params![user_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Ctx, create};
    use crate::store::{Settings, Store};
    use proto::hybrid::{CredentialStatus, CredentialUpdate};

    /// A batch finds users by immutableId (not a group that has one), keeps
    /// to the domains a token may set passwords in (non-ASCII names
    /// compared without case), and stores what it may.
    #[test]
    fn a_batch_finds_users_by_immutable_id_and_keeps_to_the_tokens_domains() {
        let store = Store::open_in_memory().unwrap();
        let mut conn = store.lock();
        let hybrid = scim::schema::HYBRID_SCHEMA;
        let ctx = Ctx { actor: "test", base_url: "http://x" };
        let settings = Settings { require_verified_domain: false, ..Settings::load(&conn).unwrap() };
        let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", hybrid],
            "userName": "Zoë@Exämple.org", hybrid: {"immutableId": "zoë-anchor"}});
        let user_id = create(&conn, &ctx, settings, Kind::User, &user).unwrap().0.id;
        let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", hybrid],
            "displayName": "Gröup", hybrid: {"immutableId": "group-anchor"}});
        create(&conn, &ctx, settings, Kind::Group, &group).unwrap();
        let update = |imm: &str| CredentialUpdate {
            immutable_id: imm.into(),
            record: Some("{SSHA}bwrncSghpHXcMHcya6myDUXUhg9zYWx0MTIzNA==".into()),
            must_change_password: false,
            remove: false,
        };
        let batch = [update("zoë-anchor"), update("group-anchor"), update("nobody")];
        let statuses = |allowed: Option<&[String]>, conn: &mut Connection| -> Vec<CredentialStatus> {
            apply_batch(conn, "test", allowed, &batch).unwrap().into_iter().map(|r| r.status).collect()
        };
        use CredentialStatus::{Forbidden, Stored, UnknownUser};
        assert_eq!(statuses(Some(&["other.org".to_string()]), &mut conn), [Forbidden, UnknownUser, UnknownUser]);
        assert!(load(&conn, &user_id).unwrap().is_none());
        assert_eq!(statuses(Some(&["exämple.org".to_string()]), &mut conn), [Stored, UnknownUser, UnknownUser]);
        assert_eq!(statuses(None, &mut conn), [Stored, UnknownUser, UnknownUser]);
        assert!(load(&conn, &user_id).unwrap().is_some());
    }
}
