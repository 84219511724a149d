//! Compact JWS (RFC 7515) for the tokens we issue, and checking our own.

use crate::db::Connection;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::keys::{self, SigningKey};
use crate::error::Result;
use crate::util::now_secs;

pub fn sign(key: &SigningKey, claims: &Value) -> Result<String> {
    let header = json!({"alg": key.alg.as_str(), "kid": key.kid, "typ": "JWT"});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The claims of a token we signed, if its signature and expiry hold.
/// A token this tenant signed, expired or not (an `id_token_hint` may be
/// old): its claims, or `None`.
pub fn verify_own_signature(conn: &Connection, token: &str) -> Result<Option<Value>> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).ok();
    let (Some(header), Some(claims), Some(sig)) = (decode(h), decode(c), decode(s)) else { return Ok(None) };
    let Ok(header) = serde_json::from_slice::<Value>(&header) else { return Ok(None) };
    let Some(kid) = header["kid"].as_str() else { return Ok(None) };
    if !keys::verify(conn, kid, format!("{h}.{c}").as_bytes(), &sig)? {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Value>(&claims).ok())
}

pub fn verify_own(conn: &Connection, token: &str) -> Result<Option<Value>> {
    Ok(verify_own_signature(conn, token)?.filter(|claims| claims["exp"].as_i64().is_some_and(|exp| exp > now_secs())))
}
