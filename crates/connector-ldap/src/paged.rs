//! A streaming search that follows paged-results cookies (RFC 2696) page by
//! page, so a directory of any size passes through in constant memory.

use std::sync::Arc;

use ldap3::Scope;
use ldap3::controls::RawControl;

use crate::ber::{self, RawEntry};
use crate::connect::Session;
use crate::error::LdapError;
use crate::reader::{Readers, SearchConnection, search_request};
use crate::wire::Response;

#[derive(Debug)]
pub struct PagedSearch {
    readers: Arc<Readers>,
    connection: Option<SearchConnection>,
    /// Whether `connection` was an idle one that has not answered yet (a
    /// server may have closed it meanwhile: then one fresh connection is tried).
    reused: bool,
    base: String,
    /// What errors say was being done.
    operation: String,
    scope: Scope,
    filter: String,
    attrs: Vec<String>,
    extra_controls: Vec<RawControl>,
    page_size: u32,
    timeout: std::time::Duration,
    cookie: Vec<u8>,
    /// The message id of the page being read.
    page: Option<i64>,
    done: bool,
    /// Pages read to their end.
    pub pages: u32,
    page_started: std::time::Instant,
    page_entries: u32,
    pub referrals_skipped: u32,
}

impl PagedSearch {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: &Session,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<String>,
        extra_controls: Vec<RawControl>,
        page_size: u32,
        timeout: std::time::Duration,
    ) -> Self {
        PagedSearch {
            readers: Arc::clone(&session.readers),
            connection: None,
            reused: false,
            base: base.to_string(),
            operation: format!("searching {base:?}"),
            scope,
            filter: filter.to_string(),
            attrs,
            extra_controls,
            page_size,
            timeout,
            cookie: Vec::new(),
            page: None,
            done: false,
            pages: 0,
            page_started: std::time::Instant::now(),
            page_entries: 0,
            referrals_skipped: 0,
        }
    }

    /// Asks for the next page on this search's connection (opened, or taken
    /// from the session's idle one, on the first page).
    async fn request_page(&mut self) -> Result<(), LdapError> {
        let op = search_request(&self.base, self.scope, &self.filter, &self.attrs).ok_or_else(|| {
            LdapError::Settings(format!("the search filter {:?} is not valid LDAP filter syntax", self.filter))
        })?;
        let mut controls = vec![ber::paged_control(self.page_size, self.cookie.clone())];
        controls.extend(self.extra_controls.iter().cloned());
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => match self.readers.take_idle() {
                Some(c) => {
                    self.reused = true;
                    c
                }
                None => self.readers.open().await?,
            },
        };
        let id = connection.send(op, &controls).await?;
        self.connection = Some(connection);
        self.page = Some(id);
        self.page_started = std::time::Instant::now();
        self.page_entries = 0;
        Ok(())
    }

    /// Whether `result` failed on an idle connection that the server had
    /// closed meanwhile; then the connection is dropped and the page is
    /// asked again on a new one (once).
    fn closed_while_idle<T>(&mut self, result: &Result<T, LdapError>) -> bool {
        if !(self.reused && matches!(result, Err(LdapError::Connection { .. }))) {
            return false;
        }
        tracing::debug!(url = %self.readers.url(), "an idle search connection was closed; opening another");
        self.reused = false;
        self.connection = None;
        self.page = None;
        true
    }

    /// The next entry, or `None` when the last page has been read.
    pub async fn next(&mut self) -> Result<Option<RawEntry>, LdapError> {
        loop {
            let Some(id) = self.page else {
                if self.done {
                    return Ok(None);
                }
                let sent = self.request_page().await;
                if !self.closed_while_idle(&sent) {
                    sent?;
                }
                continue;
            };
            let Some(connection) = self.connection.as_mut() else {
                self.page = None;
                continue;
            };
            let received = connection.receive_for(id, self.timeout, &self.operation).await;
            if self.closed_while_idle(&received) {
                continue;
            }
            let answer = match received {
                Err(e) => {
                    self.connection = None;
                    return Err(e);
                }
                Ok(answer) => answer,
            };
            self.reused = false;
            match answer {
                Response::Entry(entry) => {
                    self.page_entries += 1;
                    return Ok(Some(entry));
                }
                Response::Reference => {
                    // Referrals point at other servers; the configured servers are the scope.
                    self.referrals_skipped += 1;
                    tracing::debug!(base = %self.base, "skipped a search continuation reference");
                }
                Response::Other(_) => {}
                Response::SearchDone(result) => {
                    self.page = None;
                    self.pages += 1;
                    tracing::debug!(base = %self.base, page = self.pages, entries = self.page_entries, ms = self.page_started.elapsed().as_millis() as u64, "page read");
                    if result.code != 0 {
                        // The exchange is complete: the connection can serve the next search.
                        if let Some(connection) = self.connection.take() {
                            self.readers.give_back(connection);
                        }
                        return Err(search_error(self.readers.url(), &self.base, result.code, &result.message));
                    }
                    let cookie = result
                        .controls
                        .iter()
                        .find(|(oid, _)| oid == ber::PAGED_RESULTS_OID)
                        .and_then(|(_, value)| value.as_deref())
                        .and_then(ber::parse_paged_response)
                        .unwrap_or_default();
                    if cookie.is_empty() {
                        self.done = true;
                        if let Some(connection) = self.connection.take() {
                            self.readers.give_back(connection);
                        }
                    } else {
                        self.cookie = cookie;
                    }
                }
                Response::Bind(_) | Response::Extended(_) => {
                    self.connection = None;
                    return Err(LdapError::Protocol {
                        url: self.readers.url().to_string(),
                        what: format!("{}: an answer that is not a search result", self.operation),
                    });
                }
            }
        }
    }
}

/// Entries handed over from the reading task at a time: one wake-up of the
/// consumer per batch (a wake-up per entry made a pipelined reader slower
/// than none).
const PREFETCH_BATCH: usize = 256;
/// A batch is handed over early once its values reach this size: large
/// groups (slapd sends every member in one entry) must not make a batch of
/// 256 entries hold gigabytes.
const PREFETCH_BATCH_BYTES: usize = 4 << 20;
/// Batches read ahead, at most. With the batch being filled and the one
/// being taken, 6 batches are held at most, each under
/// [`PREFETCH_BATCH_BYTES`] plus its last entry.
const PREFETCH_AHEAD: usize = 4;

/// About the memory an entry holds (its DN, names and values).
fn entry_bytes((dn, attributes): &RawEntry) -> usize {
    dn.len()
        + attributes.iter().map(|(name, values)| name.len() + values.iter().map(Vec::len).sum::<usize>()).sum::<usize>()
}

/// What the reading task hands over.
enum Prefetch<T> {
    Entries(Vec<T>),
    Failed(LdapError),
    /// The last page was read: without this, a task that stopped early
    /// (aborted, or a panic) would look like the end of the results.
    End,
}

/// A [`PagedSearch`] read on a runtime task of its own: the socket reads and
/// the decoding run beside the caller's work with the entries before them
/// (on a multi-threaded runtime, on another core). Entries come in the
/// search's order; an error comes after the entries read before it. Dropped
/// before the end, the task is stopped and its connection closed. With
/// [`PrefetchedSearch::start_mapped`] the task also makes each entry into
/// what the caller wants (a full import's objects), off the caller's thread.
#[derive(Debug)]
pub struct PrefetchedSearch<T = RawEntry> {
    batches: tokio::sync::mpsc::Receiver<Prefetch<T>>,
    current: std::vec::IntoIter<T>,
    finished: bool,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl PrefetchedSearch {
    /// Starts reading `search` on a task of the current runtime.
    pub fn start(search: PagedSearch) -> Self {
        Self::start_mapped(search, |entry| entry)
    }
}

impl<T: Send + 'static> PrefetchedSearch<T> {
    /// Starts reading `search` on a task of the current runtime, which hands
    /// over `map` of each entry. `map` is pure work on one entry: it runs
    /// between socket reads, so it must not wait for anything.
    pub fn start_mapped(mut search: PagedSearch, mut map: impl FnMut(RawEntry) -> T + Send + 'static) -> Self {
        let url = search.readers.url().to_string();
        let (to, batches) = tokio::sync::mpsc::channel(PREFETCH_AHEAD);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(PREFETCH_BATCH);
            let mut batch_bytes = 0;
            let last = loop {
                match search.next().await {
                    Ok(Some(entry)) => {
                        batch_bytes += entry_bytes(&entry);
                        batch.push(map(entry));
                        if batch.len() >= PREFETCH_BATCH || batch_bytes >= PREFETCH_BATCH_BYTES {
                            batch_bytes = 0;
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(PREFETCH_BATCH));
                            // The consumer is gone: stop reading.
                            if to.send(Prefetch::Entries(full)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => break Prefetch::End,
                    Err(e) => break Prefetch::Failed(e),
                }
            };
            if !batch.is_empty() && to.send(Prefetch::Entries(batch)).await.is_err() {
                return;
            }
            let _ = to.send(last).await;
        });
        PrefetchedSearch { batches, current: Vec::new().into_iter(), finished: false, url, task }
    }

    /// The next entry, or `None` when the last page has been read.
    pub async fn next(&mut self) -> Result<Option<T>, LdapError> {
        loop {
            if let Some(entry) = self.current.next() {
                return Ok(Some(entry));
            }
            if self.finished {
                return Ok(None);
            }
            match self.batches.recv().await {
                Some(Prefetch::Entries(entries)) => self.current = entries.into_iter(),
                Some(Prefetch::End) => self.finished = true,
                Some(Prefetch::Failed(e)) => {
                    self.finished = true;
                    return Err(e);
                }
                None => {
                    self.finished = true;
                    return Err(LdapError::Protocol {
                        url: self.url.clone(),
                        what: "the task reading a search stopped before its end".into(),
                    });
                }
            }
        }
    }
}

impl<T> Drop for PrefetchedSearch<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A search failure with advice for the common result codes.
pub fn search_error(url: &str, base: &str, code: u32, text: &str) -> LdapError {
    let advice = match code {
        4 => " — the server's size limit was hit: raise it for the sync account, or make sure paging is allowed",
        3 => " — the server's time limit was hit: raise it for the sync account",
        10 => " — the base DN is not held by this server (a referral): check base_dns",
        32 => " — the base DN does not exist: check base_dns",
        50 => " — the bind account may not read this: grant it read access",
        _ => "",
    };
    LdapError::Search { url: url.to_string(), base: base.to_string(), code, message: format!("{text}{advice}") }
}
