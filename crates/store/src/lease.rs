//! The sync lease: which of several daemons sharing a PostgreSQL state may
//! run cycles. One row holds the holder, an epoch that grows with every
//! takeover, and an expiry by the database's clock (nodes' clocks never
//! matter). The holder renews it from a thread of its own every third of
//! its duration; a standby takes it over once it has expired. Every commit
//! of the holder's store checks holder, epoch and expiry under a row lock
//! (the fence, see [`crate::PgStore`]), so a daemon paused past its lease
//! cannot write after its successor started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sync::engine::StoreError;

use crate::postgres::{DatabaseSettings, block, connect, describe};

/// What a commit checks: this holder, at this epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub(crate) holder: String,
    pub(crate) epoch: i64,
    pub(crate) lineage: String,
}

impl Fence {
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The state's lease lineage (stable across takeovers): with the
    /// epoch, the fencing token the tenant checks.
    pub fn lineage(&self) -> &str {
        &self.lineage
    }
}

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub holder: String,
    pub epoch: i64,
    /// When this holder took it (the database's clock, RFC 3339, UTC).
    pub acquired_at: String,
    pub renewed_at: String,
    /// Milliseconds until it expires; zero or less: expired.
    pub expires_in_ms: i64,
}

impl LeaseInfo {
    pub fn expired(&self) -> bool {
        self.expires_in_ms <= 0
    }
}

struct Shared {
    lost: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A held lease, renewed until it is dropped (which hands it over at once)
/// or lost.
pub struct Lease {
    fence: Fence,
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("fence", &self.fence).field("held", &self.is_held()).finish()
    }
}

impl Lease {
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// False once a renewal found the lease gone or could not reach the
    /// database for a whole lease duration.
    pub fn is_held(&self) -> bool {
        !self.shared.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.shared.stop.lock() {
            *stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
    }
}

/// Takes the lease if nobody holds an unexpired one: `Ok(Ok(lease))`, or
/// `Ok(Err(holder))` naming who has it.
pub(crate) fn try_acquire(
    store: &crate::PgStore,
    holder: &str,
    duration: Duration,
) -> Result<Result<Lease, LeaseInfo>, StoreError> {
    let seconds = duration.as_secs_f64();
    let settings = store.settings().clone();
    let mut client = connect(&settings)?;
    let taken = block(async {
        let tx = client.transaction().await?;
        let current = tx
            .query_opt("SELECT writer_pid, expires_at > clock_timestamp() FROM sync_lease WHERE id = 1 FOR UPDATE", &[])
            .await?;
        if current.as_ref().is_some_and(|r| r.get::<_, bool>(1)) {
            return Ok(None);
        }
        let row = tx
            .query_one(
                "INSERT INTO sync_lease(id, holder, epoch, acquired_at, renewed_at, expires_at)
                 VALUES (1, $1, 1, clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => $2))
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, epoch = sync_lease.epoch + 1,
                   acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at,
                   expires_at = excluded.expires_at, writer_pid = NULL
                 RETURNING epoch, lineage",
                &[&holder, &seconds],
            )
            .await?;
        tx.commit().await?;
        Ok(Some((row.get::<_, i64>(0), row.get::<_, String>(1), current.and_then(|r| r.get::<_, Option<i32>>(0)))))
    })
    .map_err(|e: tokio_postgres::Error| StoreError(describe(&e)))?;
    let Some((epoch, lineage, previous_writer)) = taken else {
        return match store.lease_holder()? {
            Some(info) => Ok(Err(info)),
            None => Err(StoreError("the sync lease could not be taken and has no holder".into())),
        };
    };
    if let Some(pid) = previous_writer {
        // The previous holder may be paused inside a transaction, holding
        // row locks this daemon would wait on: end that session (its
        // commit would be refused by the fence anyway).
        let ended = block(client.query_opt(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND pid <> pg_backend_pid()",
            &[&pid],
        ));
        match ended {
            Ok(Some(row)) if row.get::<_, bool>(0) => {
                tracing::info!(pid, "ended the previous holder's database session");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %describe(&e), pid, "could not end the previous holder's database session")
            }
        }
    }
    let fence = Fence { holder: holder.to_string(), epoch, lineage };
    let shared = Arc::new(Shared { lost: AtomicBool::new(false), stop: Mutex::new(false), wake: Condvar::new() });
    let renewer = {
        let (fence, shared) = (fence.clone(), shared.clone());
        std::thread::Builder::new()
            .name("sync-lease".into())
            .spawn(move || renew(&settings, client, &fence, duration, &shared))
            .map_err(|e| StoreError(format!("cannot start the lease renewal: {e}")))?
    };
    Ok(Ok(Lease { fence, shared, renewer: Some(renewer) }))
}

/// Renews every third of `duration` until stopped (then hands the lease
/// over) or until the lease is lost.
fn renew(
    settings: &DatabaseSettings,
    client: tokio_postgres::Client,
    fence: &Fence,
    duration: Duration,
    shared: &Shared,
) {
    let seconds = duration.as_secs_f64();
    let mut client = Some(client);
    let mut renewed = Instant::now();
    loop {
        let stopping = {
            let Ok(stop) = shared.stop.lock() else { return };
            match shared.wake.wait_timeout_while(stop, duration / 3, |stop| !*stop) {
                Ok((stop, _)) => *stop,
                Err(_) => return,
            }
        };
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            client = connect(settings).ok();
        }
        if stopping {
            // Hand over at once: a standby need not wait for the expiry.
            if let Some(c) = &client {
                let _ = block(c.execute(
                    "UPDATE sync_lease SET expires_at = clock_timestamp() WHERE id = 1 AND holder = $1 AND epoch = $2",
                    &[&fence.holder, &fence.epoch],
                ));
            }
            shared.lost.store(true, Ordering::SeqCst);
            return;
        }
        let outcome = match &client {
            Some(c) => block(c.execute(
                "UPDATE sync_lease SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + make_interval(secs => $3)
                 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
                &[&fence.holder, &fence.epoch, &seconds],
            ))
            .map_err(|e| describe(&e)),
            None => Err("the database cannot be reached".to_string()),
        };
        match outcome {
            Ok(1) => renewed = Instant::now(),
            Ok(_) => {
                tracing::warn!(epoch = fence.epoch, "the sync lease was lost (it expired or another daemon took over)");
                shared.lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                client = None;
                if renewed.elapsed() >= duration {
                    tracing::warn!(error = %e, "the sync lease could not be renewed for its whole duration: given up");
                    shared.lost.store(true, Ordering::SeqCst);
                    return;
                }
                tracing::warn!(error = %e, "the sync lease could not be renewed; trying again");
            }
        }
    }
}

impl crate::PgStore {
    /// Takes the sync lease for `holder` if it is free or expired and makes
    /// this store write under it; otherwise says who holds it.
    pub fn try_acquire_lease(
        &mut self,
        holder: &str,
        duration: Duration,
    ) -> Result<Result<Lease, LeaseInfo>, StoreError> {
        let acquired = try_acquire(self, holder, duration)?;
        if let Ok(lease) = &acquired {
            self.write_under(lease.fence())?;
        }
        Ok(acquired)
    }
}
