//! Errors of the LDAP connector; each says what failed, where, and what to do.

/// One failed attempt to reach a server.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub url: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("invalid settings: {0}")]
    Settings(String),

    #[error("no directory server could be reached:{}", attempts.iter().map(|a| format!("\n  {}: {}", a.url, a.reason)).collect::<String>())]
    Unreachable { attempts: Vec<Attempt> },

    #[error("bind as {bind_dn:?} to {url} failed: {message}{}", hint.as_ref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Bind { url: String, bind_dn: String, code: u32, message: String, hint: Option<String> },

    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },

    #[error("search of {base:?} on {url} failed (LDAP result {code}): {message}")]
    Search { url: String, base: String, code: u32, message: String },

    #[error("the connection to {url} failed during {operation}: {reason}")]
    Connection { url: String, operation: String, reason: String },

    #[error("{url} sent a malformed {what}")]
    Protocol { url: String, what: String },

    #[error("object {dn:?} has no usable {attribute} (the id/anchor attribute): {reason}")]
    Identity { dn: String, attribute: String, reason: String },

    #[error("modifying {dn:?} on {url} failed (LDAP result {code}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Modify { url: String, dn: String, code: u32, message: String },

    #[error("{0}")]
    ReplicationRights(String),

    #[error("replicating password hashes from {host}: {message}")]
    Replication { host: String, message: String },

    #[error("the watermark is not one this connector wrote: {0}")]
    Watermark(String),

    #[error(transparent)]
    Sink(#[from] sync::SinkError),
}

/// A hint for a failed bind, from the LDAP result code and AD's "data NNN" sub-code.
pub fn bind_hint(code: u32, text: &str) -> Option<String> {
    let sub = text.split("data ").nth(1).map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect::<String>());
    let from_sub = match sub.as_deref() {
        Some("525") => Some("the user does not exist: check bind_dn"),
        Some("52e") => Some("wrong password: check the password file or environment variable"),
        Some("530") => Some("the account may not log on at this time (logon hours)"),
        Some("531") => Some("the account may not log on from this workstation"),
        Some("532") => Some("the password has expired: set a new one for the service account"),
        Some("533") => Some("the account is disabled: enable it"),
        Some("701") => Some("the account has expired: extend it"),
        Some("773") => Some("the password must be changed before first use"),
        Some("775") => Some("the account is locked out: wait or unlock it"),
        _ => None,
    };
    if let Some(h) = from_sub {
        return Some(h.to_string());
    }
    match code {
        49 => Some("invalid credentials: check bind_dn and the password".into()),
        8 | 13 => Some(
            "the server requires an encrypted connection for simple binds: use ldaps:// or set tls.starttls = true"
                .into(),
        ),
        48 => Some("the server does not allow this kind of bind (anonymous or simple binds disabled)".into()),
        53 => Some(
            "the server is unwilling to perform the bind (often: simple binds over plain LDAP are disabled)".into(),
        ),
        _ => None,
    }
}
