//! The one rule for a URL idbridge sends bearer tokens, passwords or
//! browsers to.

pub use ::url::Url;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not an absolute URL ({0})")]
    NotAbsolute(String),
    #[error("must not contain a user name or password")]
    UserInfo,
    #[error("must not contain a fragment")]
    Fragment,
    #[error("must name a host")]
    NoHost,
    #[error("plain http is only allowed for loopback addresses (it would send secrets in clear); use https://")]
    PlainHttp,
    #[error("the scheme {0}: is not http(s)")]
    Scheme(String),
}

/// Absolute, https (or http to a loopback host, for tests and local tools),
/// a host, no user information (`http://127.0.0.1@evil.example/` is not
/// loopback), no fragment. Parsed, never matched by prefix.
pub fn check_web_url(text: &str) -> Result<Url, UrlError> {
    let url = Url::parse(text).map_err(|e| UrlError::NotAbsolute(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    let loopback = match url.host() {
        Some(::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(::url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(UrlError::NoHost),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(UrlError::PlainHttp),
        other => Err(UrlError::Scheme(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: prefix checks took these for loopback.
    #[test]
    fn web_urls_are_parsed_not_prefix_matched() {
        for bad in [
            "http://127.0.0.1@evil.example/cb",
            "http://127.evil.example/cb",
            "http://localhost:80@evil.example/cb",
            "https://a b",
            "https://user:pw@idp.example/",
            "http://evil.example/cb",
            "https://idp.example/cb#frag",
            "javascript:alert(1)",
            "/relative",
            "https://",
        ] {
            assert!(check_web_url(bad).is_err(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:7777/cb",
            "http://[::1]/cb",
            "http://localhost/cb",
            "https://app.example/cb?x=1",
            "https://ünï.example/",
        ] {
            assert!(check_web_url(good).is_ok(), "{good}");
        }
    }
}
