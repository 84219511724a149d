//! Password hash sync to the tenant's `/hybrid/v1/passwords`: NT hashes
//! become PPH1 records here (random salt, our iteration count), on the
//! premises; what the tenant already has is remembered — as a fingerprint,
//! in memory only — so unchanged passwords are not sent again.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use proto::hybrid::{CredentialStatus, CredentialUpdate, PasswordBatch, PasswordResults};
use reqwest::Method;
use ring::rand::{SecureRandom, SystemRandom};
use sync::engine::TargetError;
use sync::phs::{CredentialPush, PasswordSecret, PushReport};

use crate::ScimTarget;

/// Records per request (the tenant's maximum).
const BATCH: usize = 1000;

/// SHA-256 fingerprints of what the tenant holds, by immutableId; shared
/// with the task that sends a chunk (a clone is the same record). Locked
/// only to look up or note a chunk's users, never across a request.
#[derive(Clone, Default)]
pub struct Pushed(Arc<Mutex<HashMap<String, [u8; 32]>>>);

impl Pushed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for Pushed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pushed({} users)", self.lock().len())
    }
}

fn fingerprint(item: &CredentialPush) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    match &item.secret {
        PasswordSecret::Nt(h) => {
            ctx.update(b"nt:");
            ctx.update(&h.0);
        }
        PasswordSecret::Stored(s) => {
            ctx.update(b"stored:");
            ctx.update(s.as_bytes());
        }
    }
    ctx.update(&[u8::from(item.must_change)]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The tenant record for a secret. PPH1 derivation is the slow part: it is
/// spread over the machine's cores, off the async threads.
async fn records(
    items: Vec<CredentialPush>,
    iterations: NonZeroU32,
) -> Result<Vec<(CredentialPush, String)>, TargetError> {
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
        let chunk = items.len().div_ceil(threads).max(1);
        let rng = SystemRandom::new();
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    let rng = rng.clone();
                    scope.spawn(move || {
                        part.iter()
                            .map(|item| {
                                let record = match &item.secret {
                                    PasswordSecret::Stored(s) => s.clone(),
                                    PasswordSecret::Nt(h) => {
                                        let mut salt = [0u8; passwords::pph1::SALT_LEN];
                                        rng.fill(&mut salt).map_err(|_| TargetError {
                                            message: "the system random number generator failed".into(),
                                            not_found: false,
                                        })?;
                                        passwords::Pph1::derive(h, &salt, iterations).to_string()
                                    }
                                };
                                Ok((item.clone(), record))
                            })
                            .collect::<Result<Vec<_>, TargetError>>()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for w in workers {
                let part = w
                    .join()
                    .map_err(|_| TargetError { message: "a hashing thread failed".into(), not_found: false })??;
                out.extend(part);
            }
            Ok(out)
        })
    })
    .await
    .map_err(|e| TargetError { message: format!("hashing failed: {e}"), not_found: false })?
}

impl ScimTarget {
    fn hybrid_url(&self) -> String {
        let root = self.base.strip_suffix("/scim/v2").unwrap_or(&self.base);
        format!("{root}{}", proto::hybrid::PASSWORDS_PATH)
    }

    pub(crate) async fn push(&self, items: &[CredentialPush]) -> Result<PushReport, TargetError> {
        let mut report = PushReport::default();
        let fresh: Vec<CredentialPush> = {
            let pushed = self.pushed.lock();
            items.iter().filter(|i| pushed.get(&i.immutable_id) != Some(&fingerprint(i))).cloned().collect()
        };
        report.unchanged = (items.len() - fresh.len()) as u64;
        let iterations = self.pph1_iterations;
        for chunk in fresh.chunks(BATCH) {
            let with_records = records(chunk.to_vec(), iterations).await?;
            let batch = PasswordBatch {
                credentials: with_records
                    .iter()
                    .map(|(i, r)| CredentialUpdate {
                        immutable_id: i.immutable_id.clone(),
                        record: Some(r.clone()),
                        must_change_password: i.must_change,
                        remove: false,
                    })
                    .collect(),
            };
            let body = serde_json::to_vec(&batch)
                .map_err(|e| TargetError { message: format!("encoding passwords: {e}"), not_found: false })?;
            let (status, answer) = self
                .send_tries(Method::POST, &self.hybrid_url(), Some(body.into()), crate::Repeat::Always, self.attempts)
                .await?;
            if !status.is_success() {
                return Err(crate::failure(status, &answer));
            }
            let results = serde_json::from_value::<PasswordResults>(answer).map(|r| r.results).unwrap_or_default();
            let mut pushed = self.pushed.lock();
            for (i, (item, _)) in with_records.iter().enumerate() {
                match results.get(i) {
                    Some(r) if matches!(r.status, CredentialStatus::Stored | CredentialStatus::Removed) => {
                        report.stored += 1;
                        pushed.insert(item.immutable_id.clone(), fingerprint(item));
                    }
                    Some(r) => {
                        let status = r.status.as_str();
                        let detail = r.detail.as_deref().unwrap_or("");
                        report
                            .failed
                            .push((item.immutable_id.clone(), format!("the tenant answered {status}: {detail}")));
                    }
                    None => report.failed.push((item.immutable_id.clone(), "the tenant gave no answer for it".into())),
                }
            }
        }
        Ok(report)
    }
}
