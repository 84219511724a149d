//! A streaming search that follows paged-results cookies (RFC 2696) page by
//! page, so a directory of any size passes through in constant memory.

use ldap3::controls::RawControl;
use ldap3::{Ldap, Scope, SearchStream};

use crate::ber::{self, RawEntry};
use crate::error::LdapError;

#[derive(Debug)]
pub struct PagedSearch {
    ldap: Ldap,
    url: String,
    base: String,
    scope: Scope,
    filter: String,
    attrs: Vec<String>,
    extra_controls: Vec<RawControl>,
    page_size: u32,
    timeout: std::time::Duration,
    cookie: Vec<u8>,
    stream: Option<SearchStream<'static, String, Vec<String>>>,
    done: bool,
    pub pages: u32,
    page_started: std::time::Instant,
    page_entries: u32,
    pub referrals_skipped: u32,
}

impl PagedSearch {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ldap: &Ldap,
        url: &str,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<String>,
        extra_controls: Vec<RawControl>,
        page_size: u32,
        timeout: std::time::Duration,
    ) -> Self {
        PagedSearch {
            ldap: ldap.clone(),
            url: url.to_string(),
            base: base.to_string(),
            scope,
            filter: filter.to_string(),
            attrs,
            extra_controls,
            page_size,
            timeout,
            cookie: Vec::new(),
            stream: None,
            done: false,
            pages: 0,
            page_started: std::time::Instant::now(),
            page_entries: 0,
            referrals_skipped: 0,
        }
    }

    fn conn_err(&self, e: impl std::fmt::Display) -> LdapError {
        LdapError::Connection {
            url: self.url.clone(),
            operation: format!("searching {:?}", self.base),
            reason: e.to_string(),
        }
    }

    /// The next entry, or `None` when the last page has been read.
    pub async fn next(&mut self) -> Result<Option<RawEntry>, LdapError> {
        loop {
            if self.stream.is_none() {
                if self.done {
                    return Ok(None);
                }
                let mut controls = vec![ber::paged_control(self.page_size, std::mem::take(&mut self.cookie))];
                controls.extend(self.extra_controls.iter().cloned());
                let stream = self
                    .ldap
                    .with_controls(controls)
                    .with_timeout(self.timeout)
                    .streaming_search(&self.base, self.scope, &self.filter, self.attrs.clone())
                    .await
                    .map_err(|e| self.conn_err(e))?;
                self.stream = Some(stream);
                self.pages += 1;
                self.page_started = std::time::Instant::now();
                self.page_entries = 0;
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let item = stream.next().await;
            match item {
                Err(e) => return Err(self.conn_err(e)),
                Ok(Some(re)) if re.is_ref() => {
                    // Referrals point at other servers; the configured servers are the scope.
                    self.referrals_skipped += 1;
                    tracing::debug!(base = %self.base, "skipped a search continuation reference");
                }
                Ok(Some(re)) if re.is_intermediate() => {}
                Ok(Some(re)) => {
                    self.page_entries += 1;
                    return ber::parse_entry(re.0)
                        .map(Some)
                        .ok_or(LdapError::Protocol { url: self.url.clone(), what: "search result entry".into() });
                }
                Ok(None) => {
                    let res = stream.finish().await;
                    self.stream = None;
                    tracing::debug!(base = %self.base, page = self.pages, entries = self.page_entries, ms = self.page_started.elapsed().as_millis() as u64, "page read");
                    if res.rc != 0 {
                        return Err(search_error(&self.url, &self.base, res.rc, &res.text));
                    }
                    let cookie = res
                        .ctrls
                        .iter()
                        .find(|c| c.1.ctype == ber::PAGED_RESULTS_OID)
                        .and_then(|c| c.1.val.as_deref())
                        .and_then(ber::parse_paged_response)
                        .unwrap_or_default();
                    if cookie.is_empty() {
                        self.done = true;
                    } else {
                        self.cookie = cookie;
                    }
                }
            }
        }
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
