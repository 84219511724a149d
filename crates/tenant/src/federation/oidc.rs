//! The tenant as an OpenID Connect relying party of a federated domain's
//! identity provider: discovery, the authorization redirect (code + PKCE +
//! nonce), the code exchange, and a complete check of the ID token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{CLOCK_SKEW_SECS, OidcIdp, Refusal};

/// Discovery documents and key sets are fetched again after this long (and
/// at once when a token names a key we do not have).
const CACHE_FOR: Duration = Duration::from_secs(3600);

/// What discovery says about a provider.
#[derive(Debug, Clone)]
pub struct ProviderMetadata {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// HTTP to identity providers, with their metadata and keys cached.
#[derive(Debug)]
pub struct RelyingParty {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (ProviderMetadata, Value, Instant)>>,
}

impl Default for RelyingParty {
    fn default() -> Self {
        Self::new()
    }
}

impl RelyingParty {
    pub fn new() -> RelyingParty {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        RelyingParty { http, cache: Mutex::new(HashMap::new()) }
    }

    async fn get_json(&self, url: &str) -> Result<Value, Refusal> {
        let resp = self.http.get(url).send().await.map_err(|e| Refusal::IdpUnreachable(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(Refusal::IdpUnreachable(format!("GET {url}: HTTP {}", resp.status())));
        }
        resp.json().await.map_err(|e| Refusal::Malformed(format!("GET {url}: not JSON: {e}")))
    }

    /// The provider's metadata and keys; `refresh` fetches them again.
    pub async fn provider(&self, issuer: &str, refresh: bool) -> Result<(ProviderMetadata, Value), Refusal> {
        if !refresh
            && let Ok(cache) = self.cache.lock()
            && let Some((meta, keys, at)) = cache.get(issuer)
            && at.elapsed() < CACHE_FOR
        {
            return Ok((meta.clone(), keys.clone()));
        }
        let doc = self.get_json(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))).await?;
        // OpenID Connect Discovery §4.3: the document must name the issuer we asked.
        let named = doc["issuer"].as_str().unwrap_or_default();
        if named != issuer {
            return Err(Refusal::WrongIssuer { expected: issuer.to_string(), got: named.to_string() });
        }
        let field = |name: &str| {
            doc[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Refusal::Malformed(format!("the discovery document has no {name}")))
        };
        let meta = ProviderMetadata {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            jwks_uri: field("jwks_uri")?,
        };
        let keys = self.get_json(&meta.jwks_uri).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(issuer.to_string(), (meta.clone(), keys.clone(), Instant::now()));
        }
        Ok((meta, keys))
    }

    /// Redeems `code` at the token endpoint (client_secret_basic, PKCE verifier); the ID token.
    pub async fn redeem(
        &self,
        idp: &OidcIdp,
        meta: &ProviderMetadata,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, Refusal> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let resp = self
            .http
            .post(&meta.token_endpoint)
            .basic_auth(form_encode(&idp.client_id), Some(form_encode(&idp.client_secret)))
            .form(&form)
            .send()
            .await
            .map_err(|e| Refusal::IdpUnreachable(format!("POST {}: {e}", meta.token_endpoint)))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Refusal::IdpError(format!(
                "the token endpoint refused the code: HTTP {status} {} {}",
                body["error"].as_str().unwrap_or_default(),
                body["error_description"].as_str().unwrap_or_default()
            )));
        }
        body["id_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Refusal::Malformed("the token response has no id_token".into()))
    }
}

/// RFC 6749 §2.3.1: client credentials are form-encoded before Basic.
fn form_encode(text: &str) -> String {
    crate::util::urlencode(text)
}

/// What the ID token must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now: i64,
}

/// The key id a token names (to refresh the key set when it is unknown).
pub fn key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header["kid"].as_str().map(str::to_string)
}

/// Checks an ID token completely (OIDC Core §3.1.3.7): signature with a key
/// of `jwks` (RS256 or ES256 only), issuer, audience (and azp), expiry,
/// issue time, nonce. Returns the claims.
pub fn validate_id_token(token: &str, jwks: &Value, expected: &Expected<'_>) -> Result<Value, Refusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::Malformed("the ID token is not a signed JWT (three parts)".into()));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed(format!("the ID token's {what} is not base64url")))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|_| Refusal::Malformed("the ID token's header is not JSON".into()))?;
    let signature = decode(s, "signature")?;
    let alg = header["alg"].as_str().unwrap_or_default();
    let kid = header["kid"].as_str();
    let keys = jwks["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
    let usable = |k: &&Value| {
        k["use"].as_str().is_none_or(|u| u == "sig")
            && kid.is_none_or(|kid| k["kid"].as_str() == Some(kid))
            && k["alg"].as_str().is_none_or(|a| a == alg)
    };
    let message = format!("{h}.{c}");
    let verified = match alg {
        "RS256" => keys.iter().filter(usable).filter(|k| k["kty"] == "RSA").any(|k| {
            let (Some(n), Some(e)) = (k["n"].as_str(), k["e"].as_str()) else { return false };
            let (Ok(n), Ok(e)) = (URL_SAFE_NO_PAD.decode(n), URL_SAFE_NO_PAD.decode(e)) else { return false };
            ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, message.as_bytes(), &signature)
                .is_ok()
        }),
        "ES256" => keys.iter().filter(usable).filter(|k| k["kty"] == "EC" && k["crv"] == "P-256").any(|k| {
            let (Some(x), Some(y)) = (k["x"].as_str(), k["y"].as_str()) else { return false };
            let (Ok(x), Ok(y)) = (URL_SAFE_NO_PAD.decode(x), URL_SAFE_NO_PAD.decode(y)) else { return false };
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(message.as_bytes(), &signature)
                .is_ok()
        }),
        other => {
            return Err(Refusal::BadSignature(format!(
                "the ID token is signed with {other:?}; only RS256 and ES256 are accepted"
            )));
        }
    };
    if !verified {
        return Err(Refusal::BadSignature(format!(
            "the ID token's {alg} signature does not verify with any key of the identity provider (kid {:?})",
            kid.unwrap_or("none")
        )));
    }
    let claims: Value = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|_| Refusal::Malformed("the ID token's claims are not JSON".into()))?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    if iss != expected.issuer {
        return Err(Refusal::WrongIssuer { expected: expected.issuer.to_string(), got: iss.to_string() });
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let azp_ok = audiences.len() <= 1 || claims["azp"].as_str() == Some(expected.client_id);
    if !audiences.contains(&expected.client_id) || !azp_ok {
        return Err(Refusal::WrongAudience {
            expected: expected.client_id.to_string(),
            got: claims["aud"].to_string(),
        });
    }
    let exp = claims["exp"].as_i64().ok_or_else(|| Refusal::Malformed("the ID token has no exp".into()))?;
    if expected.now > exp + CLOCK_SKEW_SECS {
        return Err(Refusal::Expired);
    }
    if claims["iat"].as_i64().is_some_and(|iat| iat > expected.now + CLOCK_SKEW_SECS)
        || claims["nbf"].as_i64().is_some_and(|nbf| nbf > expected.now + CLOCK_SKEW_SECS)
    {
        return Err(Refusal::NotYetValid);
    }
    if claims["nonce"].as_str() != Some(expected.nonce) {
        return Err(Refusal::NonceMismatch);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    struct Idp {
        key: EcdsaKeyPair,
        jwks: Value,
    }

    fn idp() -> Idp {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]});
        Idp { key, jwks }
    }

    fn sign(idp: &Idp, header: &Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = idp.key.sign(&SystemRandom::new(), format!("{h}.{c}").as_bytes()).unwrap();
        format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    const NOW: i64 = 1_800_000_000;

    fn good_claims() -> Value {
        json!({"iss": "https://idp.example", "aud": "tenant", "sub": "u1", "exp": NOW + 300, "iat": NOW, "nonce": "n1", "immutable_id": "AAAA"})
    }

    fn expected() -> Expected<'static> {
        Expected { issuer: "https://idp.example", client_id: "tenant", nonce: "n1", now: NOW }
    }

    fn check(idp: &Idp, claims: &Value) -> Result<Value, Refusal> {
        validate_id_token(&sign(idp, &json!({"alg": "ES256", "kid": "k1"}), claims), &idp.jwks, &expected())
    }

    #[test]
    fn a_good_token_passes() {
        let idp = idp();
        assert_eq!(check(&idp, &good_claims()).unwrap()["immutable_id"], "AAAA");
        let mut multi = good_claims();
        multi["aud"] = json!(["tenant", "other"]);
        multi["azp"] = json!("tenant");
        assert!(check(&idp, &multi).is_ok());
    }

    #[test]
    fn every_wrong_claim_is_named() {
        let idp = idp();
        let with = |k: &str, v: Value| {
            let mut c = good_claims();
            c[k] = v;
            check(&idp, &c).unwrap_err().code()
        };
        assert_eq!(with("iss", json!("https://evil.example")), "wrong-issuer");
        assert_eq!(with("aud", json!("someone-else")), "wrong-audience");
        assert_eq!(with("aud", json!(["tenant", "other"])), "wrong-audience", "several audiences need azp");
        assert_eq!(with("exp", json!(NOW - CLOCK_SKEW_SECS - 1)), "expired");
        assert_eq!(with("iat", json!(NOW + 3600)), "not-yet-valid");
        let mut late = good_claims();
        late["exp"] = json!(NOW - 10);
        assert!(check(&idp, &late).is_ok(), "within the clock skew");
        assert_eq!(with("nonce", json!("replayed-nonce")), "nonce-mismatch");
    }

    #[test]
    fn forged_and_unsigned_tokens_are_refused() {
        let idp = idp();
        let other = super::tests::idp();
        let forged = sign(&other, &json!({"alg": "ES256", "kid": "k1"}), &good_claims());
        assert_eq!(validate_id_token(&forged, &idp.jwks, &expected()).unwrap_err().code(), "bad-signature");
        let good = sign(&idp, &json!({"alg": "ES256", "kid": "k1"}), &good_claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered_claims = {
            let mut c = good_claims();
            c["immutable_id"] = json!("BBBB");
            URL_SAFE_NO_PAD.encode(c.to_string())
        };
        parts[1] = &tampered_claims;
        assert_eq!(validate_id_token(&parts.join("."), &idp.jwks, &expected()).unwrap_err().code(), "bad-signature");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
            URL_SAFE_NO_PAD.encode(good_claims().to_string())
        );
        assert_eq!(validate_id_token(&none, &idp.jwks, &expected()).unwrap_err().code(), "bad-signature");
        let hs = sign(&idp, &json!({"alg": "HS256", "kid": "k1"}), &good_claims());
        assert_eq!(validate_id_token(&hs, &idp.jwks, &expected()).unwrap_err().code(), "bad-signature");
        assert_eq!(validate_id_token("a.b", &idp.jwks, &expected()).unwrap_err().code(), "malformed-answer");
    }
}
