//! Pass-through authentication, the tenant's side (the HTTP endpoints are
//! in `tenant-http`): agents
//! register with a one-time token, keep an outbound long poll open, take
//! sealed sign-in requests from a shared queue and answer with the outcome.
//!
//! - Any one agent takes a request; each request is sealed for every agent
//!   online when it was made.
//! - A request an agent took but did not answer within [`LEASE`] goes back
//!   to the queue (the agent may have died), so no sign-in is lost to a
//!   killed agent while its deadline lasts.
//! - "Online" = a poll open now, or one that ended moments ago (the agent is
//!   between polls). A poll whose connection was cut (the agent killed or
//!   gone) drops it out at once, and a sign-in waiting for an answer gives
//!   up as "no agent" as soon as none of the agents it was sealed for is
//!   online and none holds it under a live lease — not at its timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::{Connection, OptionalExtension, params};
use proto::pta::{Credential, MAX_POLL_WAIT_SECS, Registration};
use pta::{Credentials, Outcome, Sealed};
use serde_json::json;

use crate::audit;
use crate::error::{Result, TenantError};
use crate::util::{new_id, new_token, now, now_secs, sha256};

/// A request an agent took and did not answer goes back to the queue after this.
pub const LEASE: Duration = Duration::from_secs(4);
/// How long a poll waits for work before it returns empty.
pub const POLL_WAIT: Duration = Duration::from_secs(MAX_POLL_WAIT_SECS);
/// An agent whose last poll ended longer ago than this is offline.
const GRACE: Duration = Duration::from_secs(3);
/// How often a waiting sign-in checks that some agent can still answer it.
const RECHECK: Duration = Duration::from_millis(500);
/// Requests handed out per poll.
const BATCH: usize = 32;
pub use proto::pta::CREDENTIAL_LIFETIME_SECS;
/// After a rotation the previous credential still works this long.
pub const ROTATION_GRACE_SECS: i64 = 300;

/// Why pass-through validation gave no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchError {
    NoAgent,
    Timeout,
}

struct Pending {
    request_id: String,
    deadline: Instant,
    sealed: HashMap<String, Sealed>,
    /// Per agent: the key its answer must be signed with.
    answer_keys: HashMap<String, pta::AnswerKey>,
}

struct Lease {
    pending: Pending,
    agent: String,
    at: Instant,
}

#[derive(Default)]
struct Agent {
    public_key: String,
    open_polls: usize,
    last_poll_end: Option<Instant>,
}

#[derive(Default)]
struct BrokerState {
    queue: VecDeque<Pending>,
    leased: HashMap<String, Lease>,
    waiters: HashMap<String, tokio::sync::oneshot::Sender<Outcome>>,
    agents: HashMap<String, Agent>,
}

/// One user's turn at pass-through validation (see [`Broker::user_turn`]).
pub struct UserTurn<'a> {
    broker: &'a Broker,
    user: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for UserTurn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTurn").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The map keeps only users with someone waiting or validating.
        let mut users = self.broker.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&self.lock) == 2 {
            users.remove(&self.user);
        }
    }
}

struct ForgetRequest<'a> {
    broker: &'a Broker,
    request_id: String,
}

impl Drop for ForgetRequest<'_> {
    fn drop(&mut self) {
        let mut state = self.broker.lock();
        state.waiters.remove(&self.request_id);
        state.queue.retain(|p| p.request_id != self.request_id);
        state.leased.remove(&self.request_id);
    }
}

/// The in-memory dispatcher shared by the sign-in handler and the agent endpoints.
#[derive(Default)]
pub struct Broker {
    state: Mutex<BrokerState>,
    /// Users with a validation under way: one at a time per user reaches
    /// the directory (concurrent attempts wait their turn).
    users: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    work: tokio::sync::Notify,
    /// How long a sign-in waits for an agent's answer.
    pub timeout: Duration,
    /// Several tenant nodes on one PostgreSQL database: the queue, leases
    /// and presence live there instead (see [`shared`]).
    shared: Option<shared::Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker")
    }
}

impl Broker {
    pub fn new(timeout: Duration) -> Broker {
        Broker { timeout, ..Broker::default() }
    }

    /// The broker for `store`: in memory for one node (SQLite), in the
    /// database for several (PostgreSQL), woken by its notifications.
    pub fn for_store(timeout: Duration, store: &Arc<crate::Store>) -> Result<Broker> {
        let shared = match store.postgres_settings() {
            Some(settings) => Some(shared::Shared::start(store.clone(), settings)?),
            None => None,
        };
        Ok(Broker { timeout, shared, ..Broker::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many agents are online now.
    pub async fn agents_online(&self) -> usize {
        match &self.shared {
            Some(shared) => shared.online().await.map_or(0, |agents| agents.len()),
            None => self.online().len(),
        }
    }

    /// Online agents and their public keys.
    fn online(&self) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .agents
            .iter()
            .filter(|(_, a)| a.open_polls > 0 || a.last_poll_end.is_some_and(|t| t.elapsed() < GRACE))
            .map(|(id, a)| (id.clone(), a.public_key.clone()))
            .collect()
    }

    /// Waits until no other validation for `user` is under way; the turn
    /// lasts as long as the returned guard.
    pub async fn user_turn(&self, user: &str) -> UserTurn<'_> {
        let lock = {
            let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            users.entry(user.to_string()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        UserTurn { broker: self, user: user.to_string(), lock, guard: Some(guard) }
    }

    /// Has an online agent check `credentials`, waiting at most `self.timeout`.
    pub async fn validate(&self, credentials: &Credentials) -> std::result::Result<Outcome, DispatchError> {
        if let Some(shared) = &self.shared {
            return shared.validate(credentials, self.timeout).await;
        }
        let agents = self.online();
        if agents.is_empty() {
            return Err(DispatchError::NoAgent);
        }
        let request_id = new_id();
        let deadline_secs = now_secs() + i64::try_from(self.timeout.as_secs()).unwrap_or(10);
        let (mut sealed, mut answer_keys) = (HashMap::new(), HashMap::new());
        for (agent, public_key) in agents {
            if let Ok((s, key)) = pta::seal(&public_key, &agent, &request_id, deadline_secs, credentials) {
                sealed.insert(agent.clone(), s);
                answer_keys.insert(agent, key);
            }
        }
        if sealed.is_empty() {
            return Err(DispatchError::NoAgent);
        }
        let sealed_for: Vec<String> = sealed.keys().cloned().collect();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.lock();
            state.waiters.insert(request_id.clone(), tx);
            state.queue.push_back(Pending {
                request_id: request_id.clone(),
                deadline: Instant::now() + self.timeout,
                sealed,
                answer_keys,
            });
        }
        // Removes the request however this ends: answered, timed out, or the
        // future dropped because the browser went away.
        let _forget = ForgetRequest { broker: self, request_id: request_id.clone() };
        self.work.notify_waiters();
        let until = Instant::now() + self.timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DispatchError::Timeout);
            }
            match tokio::time::timeout(left.min(RECHECK), &mut rx).await {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(_)) => return Err(DispatchError::Timeout),
                Err(_) if !self.may_still_answer(&request_id, &sealed_for) => return Err(DispatchError::NoAgent),
                Err(_) => {}
            }
        }
    }

    /// Whether an agent may still answer `request_id`: one it was sealed for
    /// is online, or the agent that took it holds a live lease (it is busy
    /// with the directory and polls again when done).
    fn may_still_answer(&self, request_id: &str, sealed_for: &[String]) -> bool {
        if self.lock().leased.get(request_id).is_some_and(|lease| lease.at.elapsed() <= LEASE) {
            return true;
        }
        let online = self.online();
        online.iter().any(|(agent, _)| sealed_for.contains(agent))
    }

    /// Takes up to a batch of requests sealed for `agent`, waiting up to `wait`.
    pub async fn take(&self, agent: &str, public_key: &str, wait: Duration) -> Vec<Sealed> {
        if let Some(shared) = &self.shared {
            return shared.take(agent, wait).await;
        }
        let started = Instant::now();
        {
            let mut state = self.lock();
            let a = state.agents.entry(agent.to_string()).or_default();
            a.public_key = public_key.to_string();
            a.open_polls += 1;
        }
        // Counted down however the poll ends. A poll that returned leaves the
        // agent online for a grace (it polls again at once); one dropped
        // before it returned had its connection cut: the agent is gone.
        struct Open<'a> {
            broker: &'a Broker,
            agent: String,
            returned: bool,
        }
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                let mut state = self.broker.lock();
                if let Some(a) = state.agents.get_mut(&self.agent) {
                    a.open_polls = a.open_polls.saturating_sub(1);
                    a.last_poll_end = self.returned.then(Instant::now);
                }
            }
        }
        let mut open = Open { broker: self, agent: agent.to_string(), returned: false };
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.take_now(agent);
            let left = wait.saturating_sub(started.elapsed());
            if !taken.is_empty() || left.is_zero() {
                open.returned = true;
                return taken;
            }
            // Wake for new work, and now and then to return stale leases.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), notified).await;
        }
    }

    pub fn take_now(&self, agent: &str) -> Vec<Sealed> {
        let mut state = self.lock();
        let now = Instant::now();
        // Requests whose agent went quiet go back to the queue.
        let stale: Vec<String> =
            state.leased.iter().filter(|(_, l)| now.duration_since(l.at) > LEASE).map(|(id, _)| id.clone()).collect();
        for id in stale {
            if let Some(lease) = state.leased.remove(&id)
                && lease.pending.deadline > now
            {
                tracing::warn!(request = %id, agent = %lease.agent, "an agent took a sign-in and did not answer; handing it to another");
                state.queue.push_front(lease.pending);
            }
        }
        state.queue.retain(|p| p.deadline > now);
        let mut out = Vec::new();
        let mut i = 0;
        while i < state.queue.len() && out.len() < BATCH {
            if state.queue[i].sealed.contains_key(agent) {
                if let Some(p) = state.queue.remove(i) {
                    if let Some(s) = p.sealed.get(agent) {
                        out.push(s.clone());
                    }
                    state.leased.insert(p.request_id.clone(), Lease { pending: p, agent: agent.to_string(), at: now });
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes an agent out of the online set at once (it was revoked).
    pub async fn forget(&self, agent: &str) {
        match &self.shared {
            Some(shared) => shared.forget(agent).await,
            None => {
                self.lock().agents.remove(agent);
            }
        }
    }

    /// An agent's answer; the first answer to a request counts.
    /// Takes `agent`'s answer: only the agent holding the request's lease,
    /// and only with a MAC made with that request's answer key.
    pub async fn answer(&self, agent: &str, request_id: &str, outcome: Outcome, mac: &str) -> bool {
        if let Some(shared) = &self.shared {
            return shared.answer(agent, request_id, outcome, mac).await;
        }
        let mut state = self.lock();
        let authentic = state.leased.get(request_id).is_some_and(|lease| {
            lease.agent == agent
                && lease.pending.answer_keys.get(agent).is_some_and(|key| key.verify(request_id, outcome, mac))
        });
        if !authentic {
            return false;
        }
        state.leased.remove(request_id);
        state.queue.retain(|p| p.request_id != request_id);
        match state.waiters.remove(request_id) {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}

/// The broker of several tenant nodes, in PostgreSQL. A sign-in on any
/// node seals its request for every agent online anywhere and inserts it;
/// an agent polling any node takes it (`FOR UPDATE SKIP LOCKED`, so two
/// nodes never hand out one request) under a lease; the answer is written
/// to the row and the node that made the request — the only one holding
/// the answer keys — checks its MAC. `NOTIFY` wakes the pollers
/// (`pta_work`) and the waiting sign-ins (`pta_answer`) at once; a timer
/// re-checks in case a notification was lost (listener reconnecting).
/// Times are the database's clock, never a node's.
mod shared {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proto::pta::Sealed;
    use pta::{Credentials, Outcome};

    use super::{DispatchError, GRACE, LEASE};
    use crate::db::{OptionalExtension, params};
    use crate::error::Result;
    use crate::util::new_id;

    const NOW_MS: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";
    /// How often waiters look without a notification.
    use super::RECHECK;

    pub(super) struct Shared {
        store: Arc<crate::Store>,
        work: Arc<tokio::sync::Notify>,
        answers: Arc<tokio::sync::Notify>,
    }

    impl std::fmt::Debug for Shared {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SharedBroker")
        }
    }

    fn ms(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    impl Shared {
        pub(super) fn start(store: Arc<crate::Store>, settings: &pgconn::DatabaseSettings) -> Result<Shared> {
            let work = Arc::new(tokio::sync::Notify::new());
            let answers = Arc::new(tokio::sync::Notify::new());
            let (w, a) = (work.clone(), answers.clone());
            pgconn::listen(settings, &["pta_work", "pta_answer"], move |channel, _| match channel {
                "pta_work" => w.notify_waiters(),
                _ => a.notify_waiters(),
            })
            .map_err(|e| crate::TenantError::Invalid(e.0))?;
            Ok(Shared { store, work, answers })
        }

        async fn db<T: Send + 'static>(
            &self,
            work: impl FnOnce(&crate::db::Connection) -> Result<T> + Send + 'static,
        ) -> Result<T> {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || work(&store.lock()))
                .await
                .map_err(|_| crate::TenantError::Invalid("a pass-through task failed".into()))?
        }

        /// Agents with a poll open on any node, or one that ended moments ago.
        pub(super) async fn online(&self) -> Result<Vec<(String, String)>> {
            self.db(|conn| {
                Ok(conn.query_map(
                    &format!(
                        "SELECT id, public_key FROM pta_agents WHERE revoked IS NULL AND polling_until > {NOW_MS} - ?1"
                    ),
                    params![ms(GRACE)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await
        }

        pub(super) async fn validate(
            &self,
            credentials: &Credentials,
            timeout: Duration,
        ) -> std::result::Result<Outcome, DispatchError> {
            let agents = self.online().await.map_err(|_| DispatchError::NoAgent)?;
            let request_id = new_id();
            let deadline_secs = crate::util::now_secs() + i64::try_from(timeout.as_secs()).unwrap_or(10);
            let (mut sealed, mut answer_keys) = (serde_json::Map::new(), HashMap::new());
            for (agent, public_key) in agents {
                if let Ok((s, key)) = pta::seal(&public_key, &agent, &request_id, deadline_secs, credentials)
                    && let Ok(value) = serde_json::to_value(&s)
                {
                    sealed.insert(agent.clone(), value);
                    answer_keys.insert(agent, key);
                }
            }
            if sealed.is_empty() {
                return Err(DispatchError::NoAgent);
            }
            let keys: Vec<(String, [u8; 32])> = answer_keys.iter().map(|(a, k)| (a.clone(), k.to_bytes())).collect();
            let (id, text, wait) = (request_id.clone(), serde_json::Value::Object(sealed).to_string(), ms(timeout));
            let inserted = self
                .db(move |conn| {
                    let mut sealed_keys = serde_json::Map::new();
                    for (agent, key) in keys {
                        sealed_keys.insert(
                            agent,
                            serde_json::Value::String(URL_SAFE_NO_PAD.encode(crate::secrets::seal(conn, &key)?)),
                        );
                    }
                    conn.execute(
                        &format!(
                            "INSERT INTO pta_requests(id, created, deadline, sealed, answer_keys)
                             VALUES(?1, {NOW_MS}, {NOW_MS} + ?2, ?3, ?4)"
                        ),
                        params![id, wait, text, serde_json::Value::Object(sealed_keys).to_string()],
                    )?;
                    conn.execute("SELECT pg_notify('pta_work', '')", params![])?;
                    Ok(())
                })
                .await;
            if inserted.is_err() {
                return Err(DispatchError::NoAgent);
            }
            // Removes the row however this ends (answered, timed out, or the browser went away).
            let _forget = OnDrop { store: self.store.clone(), statements: FORGET, param: request_id.clone() };
            let until = Instant::now() + timeout;
            loop {
                let notified = self.answers.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let id = request_id.clone();
                let answer = self
                    .db(move |conn| {
                        Ok(conn
                            .query_row(
                                "SELECT answered_by, outcome, mac FROM pta_requests WHERE id = ?1 AND outcome IS NOT NULL",
                                params![id],
                                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                            )
                            .optional()?)
                    })
                    .await;
                if let Ok(Some((agent, outcome, mac))) = answer {
                    let outcome: Option<Outcome> = serde_json::from_value(serde_json::Value::String(outcome)).ok();
                    match (outcome, answer_keys.get(&agent)) {
                        (Some(outcome), Some(key)) if key.verify(&request_id, outcome, &mac) => return Ok(outcome),
                        _ => {
                            tracing::warn!(agent = %agent, request = %request_id, "an answer did not carry the request's MAC; the request goes back to the queue");
                            let id = request_id.clone();
                            let _ = self
                                .db(move |conn| {
                                    conn.execute(
                                        "UPDATE pta_requests SET outcome = NULL, mac = NULL, answered_by = NULL, leased_by = NULL, leased_until = NULL WHERE id = ?1",
                                        params![id],
                                    )?;
                                    Ok(())
                                })
                                .await;
                        }
                    }
                }
                let id = request_id.clone();
                let answerable = self
                    .db(move |conn| {
                        let n: i64 = conn.query_row(
                            &format!(
                                "SELECT COUNT(*) FROM pta_requests r WHERE r.id = ?1
                                   AND (r.leased_until > {NOW_MS}
                                        OR EXISTS (SELECT 1 FROM pta_agents a
                                                   WHERE a.revoked IS NULL AND a.polling_until > {NOW_MS} - ?2
                                                     AND ((r.sealed::jsonb) -> a.id) IS NOT NULL))"
                            ),
                            params![id, ms(GRACE)],
                            |r| r.get(0),
                        )?;
                        Ok(n > 0)
                    })
                    .await;
                // Nobody it was sealed for is online and no live lease: no agent.
                // (A database error leaves the decision to the timeout.)
                if let Ok(false) = answerable {
                    return Err(DispatchError::NoAgent);
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(DispatchError::Timeout);
                }
                let _ = tokio::time::timeout(left.min(RECHECK), notified).await;
            }
        }

        /// Takes up to a batch of requests sealed for `agent` (new ones, or
        /// ones whose lease ran out), waiting up to `wait`; the agent counts
        /// as online meanwhile.
        pub(super) async fn take(&self, agent: &str, wait: Duration) -> Vec<Sealed> {
            let started = Instant::now();
            // A poll dropped before it returned had its connection cut.
            let mut open = OnDrop { store: self.store.clone(), statements: POLL_CUT, param: agent.to_string() };
            loop {
                let notified = self.work.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let left = wait.saturating_sub(started.elapsed());
                let (who, open_for) = (agent.to_string(), ms(left.min(RECHECK) + RECHECK));
                let taken = self
                    .db(move |conn| {
                        let tx = conn.transaction_for(crate::db::WriteLock::Rows)?;
                        tx.execute(
                            &format!("UPDATE pta_agents SET polling_until = {NOW_MS} + ?2 WHERE id = ?1"),
                            params![who, open_for],
                        )?;
                        let rows: Vec<(String, String)> = tx.query_map(
                            &format!(
                                "UPDATE pta_requests SET leased_by = ?1, leased_until = {NOW_MS} + ?2
                                 WHERE id IN (SELECT id FROM pta_requests
                                              WHERE outcome IS NULL AND deadline > {NOW_MS}
                                                AND (leased_by IS NULL OR leased_until < {NOW_MS})
                                                AND ((sealed::jsonb) -> CAST(?1 AS TEXT)) IS NOT NULL
                                              ORDER BY created LIMIT 32 FOR UPDATE SKIP LOCKED)
                                 RETURNING id, ((sealed::jsonb) -> CAST(?1 AS TEXT))::text"
                            ),
                            params![who, ms(LEASE)],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tx.commit()?;
                        Ok(rows)
                    })
                    .await;
                let taken: Vec<Sealed> = match taken {
                    Ok(rows) => rows.into_iter().filter_map(|(_, text)| serde_json::from_str(&text).ok()).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "pass-through requests could not be taken");
                        Vec::new()
                    }
                };
                if !taken.is_empty() || left.is_zero() {
                    open.statements = POLL_ENDED;
                    return taken;
                }
                let _ = tokio::time::timeout(left.min(RECHECK), notified).await;
            }
        }

        pub(super) async fn answer(&self, agent: &str, request_id: &str, outcome: Outcome, mac: &str) -> bool {
            let (who, id, outcome, mac) =
                (agent.to_string(), request_id.to_string(), outcome.as_str(), mac.to_string());
            let recorded = self
                .db(move |conn| {
                    // Only the lease holder, and only with the MAC of this request's answer key.
                    let keys: Option<String> = conn
                        .query_row(
                            &format!(
                                "SELECT answer_keys FROM pta_requests
                                 WHERE id = ?1 AND leased_by = ?2 AND outcome IS NULL AND deadline > {NOW_MS}"
                            ),
                            params![id, who],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let key = keys
                        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                        .and_then(|keys| keys.get(&who).and_then(|k| k.as_str()).map(str::to_string))
                        .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                        .and_then(|sealed| crate::secrets::open(conn, &sealed).ok())
                        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                        .map(pta::AnswerKey::from_bytes);
                    let parsed: Option<Outcome> =
                        serde_json::from_value(serde_json::Value::String(outcome.to_string())).ok();
                    let authentic = match (key, parsed) {
                        (Some(key), Some(parsed)) => key.verify(&id, parsed, &mac),
                        _ => false,
                    };
                    if !authentic {
                        return Ok(false);
                    }
                    let n = conn.execute(
                        &format!(
                            "UPDATE pta_requests SET outcome = ?3, mac = ?4, answered_by = ?2
                             WHERE id = ?1 AND leased_by = ?2 AND outcome IS NULL AND deadline > {NOW_MS}"
                        ),
                        params![id, who, outcome, mac],
                    )?;
                    if n > 0 {
                        conn.execute("SELECT pg_notify('pta_answer', ?1)", params![id])?;
                    }
                    Ok(n > 0)
                })
                .await;
            recorded.unwrap_or(false)
        }

        pub(super) async fn forget(&self, agent: &str) {
            let who = agent.to_string();
            let _ = self
                .db(move |conn| {
                    conn.execute("UPDATE pta_agents SET polling_until = NULL WHERE id = ?1", params![who])?;
                    Ok(())
                })
                .await;
        }
    }

    /// Runs `statements` (each with the one parameter `?1` = `param`) when
    /// dropped, on a blocking thread: the way a poll or a sign-in that ends
    /// however it ends (answered, timed out, the connection gone) cleans up.
    struct OnDrop {
        store: Arc<crate::Store>,
        statements: &'static [&'static str],
        param: String,
    }

    impl Drop for OnDrop {
        fn drop(&mut self) {
            let (store, statements, param) = (self.store.clone(), self.statements, std::mem::take(&mut self.param));
            tokio::task::spawn_blocking(move || {
                for sql in statements {
                    let _ = store.lock().execute(&sql.replace("{NOW_MS}", NOW_MS), params![param]);
                }
            });
        }
    }

    /// A finished request is deleted; so are requests of a node that died
    /// (a minute past their deadline), by whoever comes next.
    const FORGET: &[&str] = &[
        "DELETE FROM pta_requests WHERE id = ?1",
        "DELETE FROM pta_requests WHERE deadline < {NOW_MS} - 60000 AND id <> ?1",
    ];
    /// A poll that ended: the agent stays online for the grace period from now.
    const POLL_ENDED: &[&str] = &["UPDATE pta_agents SET polling_until = {NOW_MS} WHERE id = ?1"];
    /// A poll whose connection was cut: the agent is offline now.
    const POLL_CUT: &[&str] = &["UPDATE pta_agents SET polling_until = NULL WHERE id = ?1"];
}

// ---- The agents' records in the database ----

/// Makes a one-time registration token (shown once).
pub fn create_token(conn: &Connection, lifetime_secs: i64) -> Result<String> {
    let token = new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?;
    conn.execute(
        "INSERT INTO pta_tokens(hash, created, expires) VALUES(?1, ?2, ?3)",
        params![sha256(token.as_bytes()), now_secs(), now_secs() + lifetime_secs],
    )?;
    Ok(token)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_seen: Option<i64>,
    pub version: Option<String>,
    pub revoked: Option<String>,
    pub credential_expires: i64,
}

pub fn list_agents(conn: &Connection) -> Result<Vec<AgentInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, created, last_seen, version, revoked, credential_expires FROM pta_agents ORDER BY created",
    )?;
    let rows = stmt.query_map(params![], |r| {
        Ok(AgentInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            created: r.get(2)?,
            last_seen: r.get(3)?,
            version: r.get(4)?,
            revoked: r.get(5)?,
            credential_expires: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
}

pub fn revoke_agent(conn: &Connection, actor: &str, id: &str) -> Result<()> {
    if conn.execute("UPDATE pta_agents SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL", params![id, now()])? == 0 {
        return Err(TenantError::NotFound(format!("active agent {id}")));
    }
    audit::record(conn, actor, "pta-agent-revoke", None, Some(id), None)?;
    Ok(())
}

/// The agent a credential belongs to, with its public key; `None` if unknown, expired or revoked.
pub fn agent_for(conn: &Connection, credential: &str) -> Result<Option<(String, String)>> {
    let hash = sha256(credential.as_bytes());
    let now = now_secs();
    Ok(conn
        .query_row(
            "SELECT id, public_key FROM pta_agents WHERE revoked IS NULL AND
             ((credential_hash = ?1 AND credential_expires > ?2) OR (previous_hash = ?1 AND previous_expires > ?2))",
            params![hash, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Registers an agent with a one-time token: its id and first credential,
/// or `None` when the token is unknown, used or expired.
pub fn register_agent(conn: &Connection, r: &Registration) -> Result<Option<Credential>> {
    let hash = sha256(r.token.as_bytes());
    let used = conn.execute(
        "UPDATE pta_tokens SET used = 1 WHERE hash = ?1 AND used = 0 AND expires > ?2",
        params![hash, now_secs()],
    )?;
    if used == 0 {
        return Ok(None);
    }
    let id = new_id();
    let credential =
        new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?;
    let expires = now_secs() + CREDENTIAL_LIFETIME_SECS;
    conn.execute(
        "INSERT INTO pta_agents(id, name, public_key, credential_hash, credential_expires, created, version)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, r.name, r.public_key, sha256(credential.as_bytes()), expires, now(), r.version],
    )?;
    audit::record(conn, "pta", "pta-agent-register", None, Some(&id), Some(&json!({"name": r.name})))?;
    Ok(Some(Credential { agent_id: Some(id), credential, credential_expires: expires }))
}

/// A new credential for `agent`; the previous one works [`ROTATION_GRACE_SECS`] more.
pub fn rotate_credential(conn: &Connection, agent: &str) -> Result<Credential> {
    let credential =
        new_token().ok_or_else(|| TenantError::Invalid("the system random number generator failed".into()))?;
    let expires = now_secs() + CREDENTIAL_LIFETIME_SECS;
    conn.execute(
        "UPDATE pta_agents SET previous_hash = credential_hash, previous_expires = ?3,
         credential_hash = ?2, credential_expires = ?4 WHERE id = ?1",
        params![agent, sha256(credential.as_bytes()), now_secs() + ROTATION_GRACE_SECS, expires],
    )?;
    audit::record(conn, "pta", "pta-agent-rotate", None, Some(agent), None)?;
    Ok(Credential { agent_id: None, credential, credential_expires: expires })
}

/// The agent polled: it is alive.
pub fn record_poll(conn: &Connection, agent: &str) -> Result<()> {
    conn.execute("UPDATE pta_agents SET last_seen = ?2 WHERE id = ?1", params![agent, now_secs()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sign-in whose browser goes away while an agent is being asked
    /// leaves nothing behind in the broker.
    #[tokio::test]
    async fn a_cancelled_sign_in_leaves_no_waiter() {
        let broker = Broker::new(Duration::from_secs(30));
        broker.lock().agents.insert(
            "agent".into(),
            Agent { public_key: pta::AgentKey::generate().public(), open_polls: 1, last_poll_end: None },
        );
        let credentials = Credentials::check("zoë@example.org", "pässword");
        let cancelled = tokio::time::timeout(Duration::from_millis(50), broker.validate(&credentials)).await;
        assert!(cancelled.is_err(), "nobody answered, so the wait was cut short");
        let state = broker.lock();
        assert!(state.waiters.is_empty() && state.queue.is_empty() && state.leased.is_empty());
    }
}
