//! Password hash sync records and the OpenID Connect sign-in, over HTTP.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::Browser;
use testkit::browser::{Page, form_fields, query};

use super::{Tenant, synced};

pub(super) const PASSWORD: &str = "Correct horse 1";

struct Rp {
    client_id: String,
    secret: Option<String>,
    redirect: String,
}

fn register(t: &Tenant, public: bool) -> Rp {
    let store = t.store();
    let conn = store.lock();
    let redirect = "http://127.0.0.1:9/callback".to_string();
    let (client, secret) = tenant::oidc::clients::add(
        &conn,
        "test app",
        std::slice::from_ref(&redirect),
        public,
        tenant::oidc::keys::Alg::Rs256,
    )
    .unwrap();
    Rp { client_id: client.id, secret, redirect }
}

/// A synchronised user with a PPH1 record (few iterations: tests are debug builds).
pub(super) async fn synced_user(t: &Tenant, name: &str, immutable_id: &str, extra: Value) -> Value {
    let mut body = synced(immutable_id);
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    let user = t.user(name, body).await;
    let record = passwords::Pph1::derive(
        &passwords::NtHash::of_password(PASSWORD),
        b"0123456789",
        NonZeroU32::new(1000).unwrap(),
    );
    push(t, json!([{"immutableId": immutable_id, "record": record.to_string()}])).await;
    user
}

async fn push(t: &Tenant, credentials: Value) -> Value {
    let r = t
        .call(
            Method::POST,
            &format!("{}/hybrid/v1/passwords", issuer(t)),
            Some(&t.sync),
            Some(json!({"credentials": credentials})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

pub(super) fn issuer(t: &Tenant) -> String {
    t.base.trim_end_matches("/scim/v2").to_string()
}

fn pkce() -> (String, String) {
    let verifier = "v".repeat(20) + &URL_SAFE_NO_PAD.encode(b"some random bytes for the verifier!");
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

/// Runs the browser part up to the redirect back; returns the last page.
async fn sign_in(b: &mut Browser, t: &Tenant, rp: &Rp, challenge: &str, user: &str, password: &str) -> Page {
    let url = authorize_url(t, rp, challenge);
    let first = b.get(&url).await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(first.body.contains("<label for=\"username\""), "{}", first.body);
    b.password_sign_in(&url, user, password).await.unwrap()
}

fn authorize_url(t: &Tenant, rp: &Rp, challenge: &str) -> String {
    format!(
        "{}/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid%20profile%20email%20groups&state=st8&nonce=n0nce&code_challenge={challenge}&code_challenge_method=S256",
        issuer(t),
        rp.client_id,
        super::urlencode(&rp.redirect)
    )
}

async fn redeem(t: &Tenant, rp: &Rp, code: &str, verifier: &str) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", rp.redirect.clone()),
        ("code_verifier", verifier.to_string()),
    ];
    let http = reqwest::Client::new();
    let req = http.post(format!("{}/oauth2/token", issuer(t)));
    let req = match &rp.secret {
        Some(s) => req.basic_auth(&rp.client_id, Some(s)),
        None => {
            form.push(("client_id", rp.client_id.clone()));
            req
        }
    };
    req.form(&form).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_records_code_flow_refresh_and_userinfo() {
    let t = Tenant::start().await;
    let alex = synced_user(
        &t,
        "alex@corp.example.com",
        "QUxFWA==",
        json!({"displayName": "Alex Example", "emails": [{"value": "alex@corp.example.com", "primary": true}]}),
    )
    .await;

    // The /hybrid/v1 endpoint: per-item results, raw NT hashes and bad records refused.
    let results = push(
        &t,
        json!([
            {"immutableId": "nobody", "record": "{SSHA}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ"},
            {"immutableId": "QUxFWA==", "record": "92937945b518814341de3f726500d4ff"},
            {"immutableId": "QUxFWA==", "record": "v1;PPH1_MD4,zz,1,00;"},
        ]),
    )
    .await;
    let statuses: Vec<&str> =
        results["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["unknown-user", "invalid", "invalid"], "{results}");
    // Records outside the cost window: too weak to keep, or one sign-in would tie up a core.
    let nt = passwords::NtHash::of_password(PASSWORD);
    let weak = passwords::Pph1::derive(&nt, b"0123456789", NonZeroU32::new(1).unwrap());
    let costly = format!("v1;PPH1_MD4,3031323334353637,10000000,{};", "00".repeat(32));
    let results = push(
        &t,
        json!([
            {"immutableId": "QUxFWA==", "record": weak.to_string()},
            {"immutableId": "QUxFWA==", "record": costly},
            {"immutableId": "QUxFWA==", "record": "{ARGON2}$argon2id$v=19$m=1048576,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"},
        ]),
    )
    .await;
    let statuses: Vec<&str> =
        results["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["invalid", "invalid", "invalid"], "{results}");
    let read_only = t
        .call(
            Method::POST,
            &format!("{}/hybrid/v1/passwords", issuer(&t)),
            Some(&t.read),
            Some(json!({"credentials": []})),
        )
        .await;
    assert_eq!(read_only.status, StatusCode::FORBIDDEN);

    let disco = reqwest::get(format!("{}/.well-known/openid-configuration", issuer(&t))).await.unwrap();
    let disco: Value = disco.json().await.unwrap();
    assert_eq!(disco["issuer"], issuer(&t));
    assert_eq!(disco["code_challenge_methods_supported"], json!(["S256"]));
    let jwks: Value = reqwest::get(disco["jwks_uri"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");

    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    // The sign-in form may lead only to the tenant and this application (CSP form-action).
    let csp = reqwest::get(authorize_url(&t, &rp, &challenge)).await.unwrap();
    let csp = csp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("form-action 'self' http://127.0.0.1:9;"), "{csp}");
    let mut b = Browser::new().unwrap();
    let back = sign_in(&mut b, &t, &rp, &challenge, "Alex@corp.example.com", PASSWORD).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    let location = back.location.unwrap();
    assert!(location.starts_with(&rp.redirect), "{location}");
    let q = query(&location);
    assert_eq!(q["state"], "st8");
    let code = q["code"].clone();

    // PKCE mismatch is refused (and spends the code).
    let wrong = redeem(&t, &rp, &code, &("x".repeat(43))).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(wrong.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // A fresh sign-in rides on the session cookie: no form this time.
    let url = format!(
        "{}/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid%20profile%20email%20groups%20offline_access&state=s2&nonce=n2&code_challenge={challenge}&code_challenge_method=S256",
        issuer(&t),
        rp.client_id,
        super::urlencode(&rp.redirect)
    );
    let again = b.get(&url).await.unwrap();
    assert_eq!(again.status, StatusCode::SEE_OTHER, "session reused: {}", again.body);
    let code = query(&again.location.unwrap())["code"].clone();
    let tokens: Value = redeem(&t, &rp, &code, &verifier).await.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    let id_token = tokens["id_token"].as_str().unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(id_token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["sub"], alex["id"]);
    assert_eq!(claims["aud"], rp.client_id.as_str());
    assert_eq!(claims["nonce"], "n2");
    assert_eq!(claims["preferred_username"], "alex@corp.example.com");
    assert_eq!(claims["immutable_id"], "QUxFWA==");
    assert_eq!(claims["email"], "alex@corp.example.com");

    // Code reuse is refused and revokes what the code gave.
    let reuse = redeem(&t, &rp, &code, &verifier).await;
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    let http = reqwest::Client::new();
    let refresh = |token: String| {
        let (http, url, rp_id, secret) =
            (http.clone(), format!("{}/oauth2/token", issuer(&t)), rp.client_id.clone(), rp.secret.clone());
        async move {
            http.post(url)
                .basic_auth(rp_id, secret)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .unwrap()
        }
    };
    let revoked = refresh(tokens["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(revoked.status(), StatusCode::BAD_REQUEST, "the reused code's refresh token is revoked");

    // A clean exchange, then refresh with rotation and reuse detection.
    let code = query(&b.get(&url).await.unwrap().location.unwrap())["code"].clone();
    let tokens: Value = redeem(&t, &rp, &code, &verifier).await.json().await.unwrap();
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let rotated = refresh(first_refresh.clone()).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    assert_ne!(rotated["refresh_token"], tokens["refresh_token"]);
    assert_eq!(refresh(first_refresh).await.status(), StatusCode::BAD_REQUEST, "reuse detected");
    assert_eq!(
        refresh(rotated["refresh_token"].as_str().unwrap().to_string()).await.status(),
        StatusCode::BAD_REQUEST,
        "reuse revokes the whole family"
    );

    let info = http
        .get(format!("{}/oauth2/userinfo", issuer(&t)))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["sub"], alex["id"]);
    assert_eq!(info["name"], "Alex Example");
    let forged =
        http.get(format!("{}/oauth2/userinfo", issuer(&t))).bearer_auth(format!("{id_token}x")).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    // auth_time is when the user authenticated: kept through a refresh.
    let decode = |token: &Value| -> Value {
        let jwt = token["id_token"].as_str().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
    };
    let (first_claims, rotated_claims) = (decode(&tokens), decode(&rotated));
    assert!(first_claims["auth_time"].as_i64().unwrap() <= first_claims["iat"].as_i64().unwrap());
    assert_eq!(rotated_claims["auth_time"], first_claims["auth_time"], "a refresh is not a new sign-in");
    // max_age: an older session must sign in again; a recent one need not.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let strict = b.get(&format!("{url}&max_age=0")).await.unwrap();
    assert_eq!(strict.status, StatusCode::OK, "max_age=0 asks again: {:?}", strict.location);
    assert!(strict.body.contains("<label for=\"username\""), "{}", strict.body);
    let lenient = b.get(&format!("{url}&max_age=3600")).await.unwrap();
    assert_eq!(lenient.status, StatusCode::SEE_OTHER, "{}", lenient.body);
    let bad = b.get(&format!("{url}&max_age=soon")).await.unwrap();
    assert!(bad.location.unwrap_or_default().contains("error=invalid_request"));

    // A logout link without an ID token hint (any page could embed it)
    // only asks; a look-alike post-logout address is never followed.
    let logout = |hint: &str, after: &str| {
        format!(
            "{}/oauth2/logout?id_token_hint={hint}&post_logout_redirect_uri={}&state=bye",
            issuer(&t),
            super::urlencode(after)
        )
    };
    let asked = b.get(&logout("", &rp.redirect)).await.unwrap();
    assert_eq!(asked.status, StatusCode::OK);
    assert!(asked.body.contains("Sign out?"), "{}", asked.body);
    assert_eq!(b.get(&url).await.unwrap().status, StatusCode::SEE_OTHER, "still signed in");
    let forged_hint = format!("{id_token}x");
    assert!(b.get(&logout(&forged_hint, &rp.redirect)).await.unwrap().body.contains("Sign out?"));
    // With the ID token the tenant issued: the session ends, and the browser
    // goes back only to an address the client registered, exactly.
    let evil = b.get(&logout(id_token, "http://127.0.0.1:9//evil.example/..")).await.unwrap();
    assert_eq!(evil.status, StatusCode::OK, "not followed: {:?}", evil.location);
    assert_eq!(b.get(&url).await.unwrap().status, StatusCode::OK, "the session ended");
    let back = sign_in(&mut b, &t, &rp, &challenge, "alex@corp.example.com", PASSWORD).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    let out = b.get(&logout(id_token, &rp.redirect)).await.unwrap();
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.location.unwrap().ends_with("state=bye"));
    assert_eq!(b.get(&url).await.unwrap().status, StatusCode::OK);
    // Confirming on the tenant's own page signs out (its form carries a CSRF token).
    let back = sign_in(&mut b, &t, &rp, &challenge, "alex@corp.example.com", PASSWORD).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    let asked = b.get(&logout("", &rp.redirect)).await.unwrap();
    let confirmed = b.post(&format!("{}/oauth2/logout", issuer(&t)), &form_fields(&asked.body, &[])).await.unwrap();
    assert!(confirmed.body.contains("You have signed out"), "{}", confirmed.body);
    assert_eq!(b.get(&url).await.unwrap().status, StatusCode::OK);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_the_right_thing() {
    let t = Tenant::start().await;
    synced_user(&t, "sam@corp.example.com", "U0FN", json!({})).await;
    synced_user(&t, "dee@corp.example.com", "REVF", json!({"active": false})).await;
    synced_user(&t, "mo@corp.example.com", "TU8=", json!({})).await;
    let record = passwords::Pph1::derive(
        &passwords::NtHash::of_password(PASSWORD),
        b"0123456789",
        NonZeroU32::new(1000).unwrap(),
    );
    push(&t, json!([{"immutableId": "TU8=", "record": record.to_string(), "mustChangePassword": true}])).await;
    let rp = register(&t, true);
    let (_, challenge) = pkce();
    let mut b = Browser::new().unwrap();

    // Wrong password and unknown user: the same words.
    let wrong = sign_in(&mut b, &t, &rp, &challenge, "sam@corp.example.com", "nope").await;
    let unknown = sign_in(&mut b, &t, &rp, &challenge, "nobody@corp.example.com", PASSWORD).await;
    assert!(wrong.body.contains("user name or password is incorrect"), "{}", wrong.body);
    assert!(unknown.body.contains("user name or password is incorrect"));
    assert!(wrong.body.contains("role=\"alert\""));
    let disabled = sign_in(&mut b, &t, &rp, &challenge, "dee@corp.example.com", PASSWORD).await;
    assert!(disabled.body.contains("disabled"), "{}", disabled.body);
    let must_change = sign_in(&mut b, &t, &rp, &challenge, "mo@corp.example.com", PASSWORD).await;
    assert!(must_change.body.contains("does not allow password changes here"), "{}", must_change.body);
    // Where the tenant allows it, the user chooses a new password and is signed in.
    {
        let store = t.store();
        let conn = store.lock();
        let mut settings = tenant::Settings::load(&conn).unwrap();
        settings.allow_cloud_password_change = true;
        settings.save(&conn).unwrap();
    }
    let mut fresh = Browser::new().unwrap();
    let change = sign_in(&mut fresh, &t, &rp, &challenge, "mo@corp.example.com", PASSWORD).await;
    assert!(change.body.contains("Choose a new password"), "{}", change.body);
    let action = format!("{}/oauth2/authorize", issuer(&t));
    let mismatch = fresh
        .post(
            &action,
            &form_fields(
                &change.body,
                &[("password", PASSWORD), ("new_password", "Brand-new-1"), ("confirm", "Brand-new-2")],
            ),
        )
        .await
        .unwrap();
    assert!(mismatch.body.contains("do not match"), "{}", mismatch.body);
    let changed = fresh
        .post(
            &action,
            &form_fields(
                &change.body,
                &[("password", PASSWORD), ("new_password", "Brand-new-1"), ("confirm", "Brand-new-1")],
            ),
        )
        .await
        .unwrap();
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);
    let again = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "mo@corp.example.com", "Brand-new-1").await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "the new password works: {}", again.body);

    // Ten failures lock the user; then even the right password is refused the same way.
    for _ in 0..9 {
        sign_in(&mut b, &t, &rp, &challenge, "sam@corp.example.com", "nope").await;
    }
    let locked = sign_in(&mut b, &t, &rp, &challenge, "sam@corp.example.com", PASSWORD).await;
    assert!(locked.body.contains("temporarily locked"), "{}", locked.body);
    // How long depends on when the lock began (not asserted to the second: load varies).
    assert!(locked.body.contains("Try again in "), "the wait is said: {}", locked.body);
    // Post, redirect, get: the user-name step answers with a redirect to the
    // password step, so Back after signing in never re-sends a form.
    let url = authorize_url(&t, &rp, &challenge);
    let mut fresh = Browser::new().unwrap();
    let first = fresh.get(&url).await.unwrap();
    let action = url.split('?').next().unwrap().to_string();
    let posted = fresh.post(&action, &form_fields(&first.body, &[("username", "sam@corp.example.com")])).await.unwrap();
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.body);
    assert!(posted.location.as_deref().is_some_and(|l| l.contains("step=password")), "{:?}", posted.location);
    // DOMAIN\name is taken as typed and answered with the expected form.
    let netbios = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "CORP\\sam", PASSWORD).await;
    assert!(netbios.body.contains("not DOMAIN\\name") && netbios.body.contains("type=\"text\""), "{}", netbios.body);

    // Requests that must not go back to the application.
    let bad_redirect = b
        .get(&format!("{}/oauth2/authorize?client_id={}&redirect_uri=https%3A%2F%2Fevil.example%2F&response_type=code&scope=openid&code_challenge={challenge}&code_challenge_method=S256", issuer(&t), rp.client_id))
        .await.unwrap();
    assert_eq!(bad_redirect.status, StatusCode::BAD_REQUEST);
    assert!(bad_redirect.body.contains("redirect_uri mismatch"));
    // A public client without PKCE goes back with an error.
    let no_pkce = b
        .get(&format!(
            "{}/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid&state=x",
            issuer(&t),
            rp.client_id,
            super::urlencode(&rp.redirect)
        ))
        .await
        .unwrap();
    assert!(no_pkce.location.unwrap().contains("error=invalid_request"));
    // The form without its CSRF token.
    let page = b
        .get(&format!("{}/oauth2/authorize?client_id={}&redirect_uri={}&response_type=code&scope=openid&code_challenge={challenge}&code_challenge_method=S256", issuer(&t), rp.client_id, super::urlencode(&rp.redirect)))
        .await.unwrap();
    let mut fields = form_fields(&page.body, &[("username", "sam@corp.example.com")]);
    fields.retain(|(k, _)| k != "csrf");
    let refused = b.post(&format!("{}/oauth2/authorize", issuer(&t)), &fields).await.unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("security token is missing"));
    // A cookie and field the attacker chose (equal, but not minted here) are refused too.
    fields.push(("csrf".into(), "attacker-chosen".into()));
    let planted = reqwest::Client::new()
        .post(format!("{}/oauth2/authorize", issuer(&t)))
        .header("cookie", "idb_csrf=attacker-chosen")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(planted.status(), StatusCode::BAD_REQUEST);

    // Every attempt is in the audit log with its reason.
    let store = t.store();
    let audit = tenant::audit::recent(&store.lock(), 100).unwrap();
    let reasons: Vec<String> = audit
        .iter()
        .filter(|e| e.action.starts_with("sign-in"))
        .filter_map(|e| e.detail.as_ref().and_then(|d| d["result"].as_str()).map(str::to_string))
        .collect();
    for expected in
        ["wrong-password", "no-such-user-or-password", "disabled", "must-change-password-on-premises", "locked-out"]
    {
        assert!(reasons.iter().any(|r| r == expected), "{expected} missing from {reasons:?}");
    }
    t.stop().await;
}

/// The relying party side done by a standard OpenID Connect client library
/// (the `openidconnect` crate): discovery, code + PKCE, ID token signature
/// and claims, refresh, userinfo — for an RS256 and an ES256 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_oidc_client_library_signs_in() {
    use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType, CoreUserInfoClaims};
    use openidconnect::{
        AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
        OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
    };

    let t = Tenant::start().await;
    let alex = synced_user(&t, "alex@corp.example.com", "QUxFWA==", json!({"displayName": "Alex Example"})).await;
    let http = openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let metadata = CoreProviderMetadata::discover_async(IssuerUrl::new(issuer(&t)).unwrap(), &http).await.unwrap();

    for alg in [tenant::oidc::keys::Alg::Rs256, tenant::oidc::keys::Alg::Es256] {
        let (client_id, secret) = {
            let store = t.store();
            let conn = store.lock();
            let (c, s) =
                tenant::oidc::clients::add(&conn, "library", &["http://127.0.0.1:9/cb".to_string()], false, alg)
                    .unwrap();
            (c.id, s.unwrap())
        };
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(client_id),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(RedirectUrl::new("http://127.0.0.1:9/cb".into()).unwrap());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("offline_access".into()))
            .set_pkce_challenge(challenge)
            .url();
        let mut b = Browser::new().unwrap();
        let back = b.password_sign_in(url.as_str(), "alex@corp.example.com", PASSWORD).await.unwrap();
        let q = query(&back.location.unwrap());
        assert_eq!(&q["state"], csrf.secret());
        let tokens = client
            .exchange_code(AuthorizationCode::new(q["code"].clone()))
            .unwrap()
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .unwrap();
        let mut verifier = client.id_token_verifier();
        if alg == tenant::oidc::keys::Alg::Es256 {
            verifier = verifier.set_allowed_algs(vec![openidconnect::core::CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
        }
        let claims = tokens.id_token().unwrap().claims(&verifier, &nonce).unwrap();
        assert_eq!(claims.subject().as_str(), alex["id"].as_str().unwrap());
        assert_eq!(claims.preferred_username().unwrap().as_str(), "alex@corp.example.com");
        // How the person signed in (RFC 8176), read by the library.
        let amr: Vec<&str> = claims.auth_method_refs().unwrap().iter().map(|m| m.as_str()).collect();
        assert_eq!(amr, ["pwd"]);
        assert_eq!(claims.auth_context_ref().unwrap().as_str(), "urn:idbridge:acr:1fa");
        // A token with a changed payload does not verify.
        let text = tokens.id_token().unwrap().to_string();
        let mut parts: Vec<String> = text.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap())
                .unwrap()
                .replace("Alex Example", "Eve Example"),
        );
        let forged: openidconnect::core::CoreIdToken = parts.join(".").parse().unwrap();
        assert!(forged.claims(&verifier, &nonce).is_err(), "a forged ID token must not verify");

        let info: CoreUserInfoClaims =
            client.user_info(tokens.access_token().to_owned(), None).unwrap().request_async(&http).await.unwrap();
        assert_eq!(info.subject().as_str(), alex["id"].as_str().unwrap());
        let refreshed =
            client.exchange_refresh_token(tokens.refresh_token().unwrap()).unwrap().request_async(&http).await.unwrap();
        assert_ne!(refreshed.access_token().secret(), tokens.access_token().secret());

        // Key rotation: a token signed with the retired key still verifies
        // against the keys published after the rotation.
        {
            let store = t.store();
            tenant::oidc::keys::rotate(&store.lock(), alg).unwrap();
        }
        let after = CoreProviderMetadata::discover_async(IssuerUrl::new(issuer(&t)).unwrap(), &http).await.unwrap();
        let client = CoreClient::from_provider_metadata(after, client.client_id().clone(), None);
        let mut verifier = client.id_token_verifier();
        if alg == tenant::oidc::keys::Alg::Es256 {
            verifier = verifier.set_allowed_algs(vec![openidconnect::core::CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
        }
        assert!(tokens.id_token().unwrap().claims(&verifier, &nonce).is_ok(), "old token after rotation");
    }
    t.stop().await;
}

/// 100 wrong passwords at once for one user: the lock is reserved before the
/// password is checked, so at most the threshold (10) are ever evaluated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_stop_at_the_threshold() {
    let t = Tenant::start().await;
    synced_user(&t, "zoë@corp.example.com", "em9lw6s", json!({})).await;
    let rp = register(&t, true);
    let (_, challenge) = pkce();
    let url = authorize_url(&t, &rp, &challenge);
    super::concurrent_password_posts(&url, "zoë@corp.example.com", "not the password", 100).await;
    let store = t.store();
    let results: Vec<String> = tenant::audit::recent(&store.lock(), 500)
        .unwrap()
        .iter()
        .filter(|e| e.action.starts_with("sign-in"))
        .filter_map(|e| e.detail.as_ref().and_then(|d| d["result"].as_str()).map(str::to_string))
        .collect();
    let evaluated = results.iter().filter(|r| *r == "wrong-password").count();
    let locked = results.iter().filter(|r| *r == "locked-out").count();
    assert!(evaluated <= 10, "{evaluated} of 100 concurrent attempts were evaluated");
    assert_eq!(evaluated + locked, 100, "{results:?}");
    // Over-long names are refused before any work.
    let long = format!("{}@corp.example.com", "a".repeat(300));
    let page = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, &long, "x").await;
    assert!(page.body.contains("user name or password is incorrect"), "{}", page.body);
    t.stop().await;
}

/// An unknown user costs what a known one does: a cheap `{SSHA}` record is
/// padded with the decoy. Samples interleaved (known, unknown, …) so load
/// on the machine hits both alike; the margin is wide (before the fix the
/// medians differed about tenfold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_known_users_take_the_same_time() {
    let t = Tenant::start().await;
    let samples = 30;
    let mut records = Vec::new();
    for i in 0..samples {
        let anchor = format!("c3NoYS11c2Vy{i}");
        t.user(&format!("ssha{i}@corp.example.com"), synced(&anchor)).await;
        records.push(json!({"immutableId": anchor, "record": passwords::scheme::ssha(PASSWORD, b"salt")}));
    }
    push(&t, Value::Array(records)).await;
    let rp = register(&t, true);
    let (_, challenge) = pkce();
    let url = authorize_url(&t, &rp, &challenge);
    let action = url.split('?').next().unwrap().to_string();
    let time_wrong_password = async |user: String| {
        let mut b = Browser::new().unwrap();
        let first = b.get(&url).await.unwrap();
        let second = b.enter_username(&url, &first, user.as_str()).await.unwrap();
        let form = form_fields(&second.body, &[("password", "wrong")]);
        let started = std::time::Instant::now();
        let page = b.post(&action, &form).await.unwrap();
        assert!(page.body.contains("user name or password is incorrect"), "{}", page.body);
        started.elapsed()
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..samples {
        known.push(time_wrong_password(format!("ssha{i}@corp.example.com")).await);
        unknown.push(time_wrong_password(format!("nobody{i}@corp.example.com")).await);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[samples / 2].as_secs_f64(), unknown[samples / 2].as_secs_f64());
    assert!(u / k < 3.0 && k / u < 3.0, "median known {k:.4} s, unknown {u:.4} s");
    t.stop().await;
}

/// On a federated domain, posting a password gets the same answer for a
/// user the tenant has and one it has not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_domain_answers_alike_for_known_and_unknown_users() {
    let t = Tenant::start().await;
    synced_user(&t, "fed@corp.example.com", "ZmVk", json!({})).await;
    let store = t.store();
    store
        .lock()
        .execute("UPDATE domains SET auth = 'federated' WHERE name = 'corp.example.com'", tenant::db::params![])
        .unwrap();
    let broker = tenant::pta::Broker::new(std::time::Duration::from_secs(1));
    let policy = tenant::signin::LockoutPolicy::default();
    let mut answers = Vec::new();
    for user in ["fed@corp.example.com", "nobody@corp.example.com"] {
        let answer =
            tenant::signin::sign_in(&store, &broker, user, PASSWORD, &tenant::signin::Origin::at("192.0.2.1"), policy)
                .await
                .unwrap();
        answers.push(answer.map(|_| ()).unwrap_err().to_string());
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].contains("corp.example.com"), "{answers:?}");
    t.stop().await;
}

/// Refresh tokens only with offline_access; a new password record ends the
/// user's sessions and refresh tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_need_offline_access_and_end_with_a_new_password() {
    let t = Tenant::start().await;
    synced_user(&t, "rui@corp.example.com", "cnVp", json!({})).await;
    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    let mut b = Browser::new().unwrap();
    let back = sign_in(&mut b, &t, &rp, &challenge, "rui@corp.example.com", PASSWORD).await;
    let code = query(&back.location.unwrap())["code"].clone();
    let tokens: Value = redeem(&t, &rp, &code, &verifier).await.json().await.unwrap();
    assert!(tokens.get("refresh_token").is_none(), "no offline_access, no refresh token: {tokens}");
    let offline =
        format!("{}&scope=openid%20offline_access", authorize_url(&t, &rp, &challenge).replace("&scope=", "&x="));
    let again = b.get(&offline).await.unwrap();
    assert_eq!(again.status, StatusCode::SEE_OTHER, "the session signs in: {}", again.body);
    let code = query(&again.location.unwrap())["code"].clone();
    let tokens: Value = redeem(&t, &rp, &code, &verifier).await.json().await.unwrap();
    let refresh_token = tokens["refresh_token"].as_str().expect("offline_access gives a refresh token").to_string();
    // The password changes on-premises: a new record arrives.
    let record = passwords::Pph1::derive(
        &passwords::NtHash::of_password("New-pässword-2"),
        b"0123456789",
        NonZeroU32::new(1000).unwrap(),
    );
    push(&t, json!([{"immutableId": "cnVp", "record": record.to_string()}])).await;
    let refreshed = reqwest::Client::new()
        .post(format!("{}/oauth2/token", issuer(&t)))
        .basic_auth(&rp.client_id, rp.secret.as_ref())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::BAD_REQUEST, "the refresh token ended with the old password");
    let form = b.get(&offline).await.unwrap();
    assert_eq!(form.status, StatusCode::OK, "the session ended too");
    t.stop().await;
}

/// Smart lockout by location: failures from elsewhere lock the user there,
/// not where they usually sign in; an address past its limit refuses only
/// the names that failed from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_keeps_a_familiar_location_open_and_locks_only_failing_names_per_address() {
    let t = Tenant::start().await;
    synced_user(&t, "ana@corp.example.com", "YW5h", json!({})).await;
    synced_user(&t, "ben@corp.example.com", "YmVu", json!({})).await;
    let store = t.store();
    let broker = tenant::pta::Broker::new(std::time::Duration::from_secs(1));
    let policy = tenant::signin::LockoutPolicy { address_threshold: 15, ..Default::default() };
    let attempt = |user: &'static str, password: &'static str, address: &'static str| {
        let (store, broker) = (store.clone(), &broker);
        async move {
            tenant::signin::sign_in(&store, broker, user, password, &tenant::signin::Origin::at(address), policy)
                .await
                .unwrap()
                .map(|_| ())
        }
    };
    // Ana signs in at the office: a familiar location from now on.
    attempt("ana@corp.example.com", PASSWORD, "198.51.100.10").await.unwrap();
    // Someone elsewhere tries ten wrong passwords: Ana is locked there ...
    for _ in 0..10 {
        let _ = attempt("ana@corp.example.com", "guess", "203.0.113.66").await;
    }
    let there = attempt("ana@corp.example.com", PASSWORD, "203.0.113.66").await.unwrap_err();
    assert!(matches!(there, tenant::signin::SignInError::LockedOut { .. }), "{there:?}");
    // ... and from any other unfamiliar place, but not at the office.
    let other = attempt("ana@corp.example.com", PASSWORD, "2001:db8:5::1").await.unwrap_err();
    assert!(matches!(other, tenant::signin::SignInError::LockedOut { .. }), "{other:?}");
    attempt("ana@corp.example.com", PASSWORD, "198.51.100.10").await.unwrap();
    // The attacker's address passes its limit (15 with ana's 10): it refuses
    // the names that failed from it, not Ben, who shares the address.
    for _ in 0..5 {
        let _ = attempt("nobody@corp.example.com", "guess", "203.0.113.66").await;
    }
    let nobody = attempt("nobody@corp.example.com", "guess", "203.0.113.66").await.unwrap_err();
    assert!(matches!(nobody, tenant::signin::SignInError::LockedOut { .. }), "{nobody:?}");
    attempt("ben@corp.example.com", PASSWORD, "203.0.113.66").await.unwrap();
    assert_eq!(tenant::signin::location_of("2001:db8:5:6:7::1"), "2001:db8:5:6::/64");
    t.stop().await;
}

/// A sync token limited to one domain cannot set passwords in another
/// (a sync token can sign in as any user it may set a password for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_token_sets_passwords_only_in_its_domains() {
    let t = Tenant::start().await;
    t.user("in@corp.example.com", synced("aW4")).await;
    t.user("out@example.test", synced("b3V0")).await;
    let limited = {
        let store = t.store();
        let conn = store.lock();
        let (id, token) = tenant::tokens::create(&conn, tenant::tokens::Scope::Sync, None, Some("corp only")).unwrap();
        tenant::tokens::restrict_domains(&conn, &id, &["Corp.Example.com".to_string()]).unwrap();
        token
    };
    let record = passwords::Pph1::derive(
        &passwords::NtHash::of_password(PASSWORD),
        b"0123456789",
        NonZeroU32::new(1000).unwrap(),
    );
    let r = t
        .call(
            Method::POST,
            &format!("{}/hybrid/v1/passwords", issuer(&t)),
            Some(&limited),
            Some(json!({"credentials": [
                {"immutableId": "aW4", "record": record.to_string()},
                {"immutableId": "b3V0", "record": record.to_string()},
            ]})),
        )
        .await;
    let statuses: Vec<&str> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["stored", "forbidden"], "{}", r.body);
    t.stop().await;
}

/// The code `oathtool` (Debian's; independent of ours) gives for `secret`
/// `offset` seconds from now.
fn oathtool(secret: &str, offset: i64) -> String {
    testkit::oathtool(secret, tenant::util::now_secs() + offset).unwrap()
}

/// A user with an authenticator app is asked for a code after the
/// password: wrong and reused codes are refused (and count toward smart
/// lockout like wrong passwords), a current one signs in once, a recovery
/// code works once; users without one are not asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticator_codes_are_the_second_step() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    let otto = synced_user(&t, "otto@corp.example.com", "T1RUTw==", json!({})).await;
    synced_user(&t, "pia@corp.example.com", "UElB", json!({})).await;
    let offer = tenant::mfa::offer_totp("idbridge", "otto@corp.example.com");
    let enrolled_with = oathtool(&offer.secret, 0);
    let enrolled = {
        let store = t.store();
        let conn = store.lock();
        tenant::mfa::confirm_totp(&conn, otto["id"].as_str().unwrap(), &offer.secret, &enrolled_with, "Phone")
            .unwrap()
            .unwrap()
    };
    let action = format!("{}/oauth2/authorize", issuer(&t));

    // Without a second factor: signed in by the password alone.
    let pia = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "pia@corp.example.com", PASSWORD).await;
    assert_eq!(pia.status, StatusCode::SEE_OTHER, "{}", pia.body);

    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "otto@corp.example.com", PASSWORD).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("Verify it’s you") && page.body.contains("autocomplete=\"one-time-code\""),
        "{}",
        page.body
    );
    let wrong_code = format!("{:06}", (oathtool(&offer.secret, 0).parse::<u32>().unwrap() + 500_000) % 1_000_000);
    let wrong = b.post(&action, &form_fields(&page.body, &[("code", &wrong_code)])).await.unwrap();
    assert!(wrong.body.contains("That code is not right") && wrong.body.contains("role=\"alert\""), "{}", wrong.body);
    let reused = b.post(&action, &form_fields(&wrong.body, &[("code", &enrolled_with)])).await.unwrap();
    assert!(reused.body.contains("already used"), "{}", reused.body);
    let malformed = b.post(&action, &form_fields(&reused.body, &[("code", "１２３４５６")])).await.unwrap();
    assert!(malformed.body.contains("Enter the 6-digit code"), "{}", malformed.body);
    let right =
        b.post(&action, &form_fields(&malformed.body, &[("code", &oathtool(&offer.secret, 30))])).await.unwrap();
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.body);
    let code = query(right.location.as_deref().unwrap()).get("code").cloned().unwrap();
    let tokens = redeem(&t, &rp, &code, &verifier).await;
    assert_eq!(tokens.status(), StatusCode::OK);
    // The ID token says both factors were used (RFC 8176 amr, and acr).
    let tokens: Value = tokens.json().await.unwrap();
    let payload = tokens["id_token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]), "{claims}");
    assert_eq!(claims["acr"], "urn:idbridge:acr:mfa");
    // The browser's session remembers it: the next application gets the same.
    let (verifier2, challenge2) = pkce();
    let sso = b.get(&authorize_url(&t, &rp, &challenge2)).await.unwrap();
    assert_eq!(sso.status, StatusCode::SEE_OTHER, "single sign-on: {}", sso.body);
    let code = query(sso.location.as_deref().unwrap()).get("code").cloned().unwrap();
    let tokens: Value = redeem(&t, &rp, &code, &verifier2).await.json().await.unwrap();
    let payload = tokens["id_token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]), "{claims}");
    // The same second step cannot be taken twice.
    let again =
        b.post(&action, &form_fields(&malformed.body, &[("code", &oathtool(&offer.secret, 30))])).await.unwrap();
    assert!(again.body.contains("took too long"), "{}", again.body);

    // A recovery code, once.
    let recovery = enrolled.recovery_codes.first().unwrap().clone();
    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "otto@corp.example.com", PASSWORD).await;
    let used = b.post(&action, &form_fields(&page.body, &[("code", &recovery)])).await.unwrap();
    assert_eq!(used.status, StatusCode::SEE_OTHER, "{}", used.body);
    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "otto@corp.example.com", PASSWORD).await;
    let spent = b.post(&action, &form_fields(&page.body, &[("code", &recovery)])).await.unwrap();
    assert!(spent.body.contains("That code is not right"), "{}", spent.body);

    // Wrong codes lock like wrong passwords (the default threshold, 10 on
    // one key: the one already counted above, and nine more).
    let mut last = spent;
    for _ in 0..9 {
        last = b.post(&action, &form_fields(&last.body, &[("code", &wrong_code)])).await.unwrap();
    }
    let locked = b.post(&action, &form_fields(&last.body, &[("code", &oathtool(&offer.secret, 0))])).await.unwrap();
    assert!(locked.body.contains("temporarily locked"), "{}", locked.body);
    let password_too =
        sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "otto@corp.example.com", PASSWORD).await;
    assert!(password_too.body.contains("temporarily locked"), "{}", password_too.body);

    // The sign-in log names the second step.
    let store = t.store();
    let conn = store.lock();
    let log = tenant::signin_log::query(&conn, &tenant::signin_log::Filter::default(), 100).unwrap();
    assert!(log.iter().any(|e| e.method == "authenticator-code" && e.success));
    assert!(log.iter().any(|e| e.method == "recovery-code" && e.success));
    assert!(log.iter().any(|e| e.method == "authenticator-code" && e.reason == "code-reused"));
}

/// Security info (`/account`): a signed-in user adds an authenticator app
/// (the key from the page, the code from oathtool), sees ten recovery codes
/// once, is asked for a code at the next sign-in, and removes the app.
/// Without a session the page says to sign in; a form without the CSRF
/// token is refused; a wrong code stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_info_adds_and_removes_an_authenticator_app() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (_, challenge) = pkce();
    synced_user(&t, "rhea@corp.example.com", "UkhFQQ==", json!({})).await;
    let account = format!("{}/account", issuer(&t));
    let action = format!("{}/oauth2/authorize", issuer(&t));

    let anonymous = Browser::new().unwrap().get(&account).await.unwrap();
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.body.contains("href=\"/account/sign-in\""), "{}", anonymous.body);

    let mut b = Browser::new().unwrap();
    let signed_in = sign_in(&mut b, &t, &rp, &challenge, "rhea@corp.example.com", PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "no second factor yet: {}", signed_in.body);
    let page = b.get(&account).await.unwrap();
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("rhea@corp.example.com") && page.body.contains("Only your password"), "{}", page.body);
    assert!(page.body.contains("Recent sign-ins") && page.body.contains("password"), "{}", page.body);

    let forged = b.post(&account, &[("action".to_string(), "offer".to_string())]).await.unwrap();
    assert_eq!(forged.status, StatusCode::BAD_REQUEST, "no CSRF token: {}", forged.body);
    let offer = b.post(&account, &form_fields(&page.body, &[("action", "offer")])).await.unwrap();
    assert!(offer.body.contains("<svg") && offer.body.contains("QR code"), "{}", offer.body);
    let secret = offer.body.split("<code id=\"secret\">").nth(1).and_then(|r| r.split('<').next()).unwrap().to_string();
    assert!(secret.len() >= 32, "{secret}");
    let wrong_code = format!("{:06}", (oathtool(&secret, 0).parse::<u32>().unwrap() + 500_000) % 1_000_000);
    let wrong =
        b.post(&account, &form_fields(&offer.body, &[("code", &wrong_code), ("label", "Phone")])).await.unwrap();
    assert!(wrong.body.contains("That code is not right") && wrong.body.contains(&secret), "{}", wrong.body);
    let still = b.get(&account).await.unwrap();
    assert!(still.body.contains("Only your password"), "a wrong code stores nothing");
    let added = b
        .post(&account, &form_fields(&wrong.body, &[("code", &oathtool(&secret, 0)), ("label", "Rhea’s phone")]))
        .await
        .unwrap();
    assert!(added.body.contains("Authenticator app added"), "{}", added.body);
    assert_eq!(added.body.matches("<li><code>").count(), 10, "ten recovery codes: {}", added.body);
    let page = b.get(&account).await.unwrap();
    assert!(page.body.contains("Rhea’s phone") && page.body.contains("10 unused recovery codes"), "{}", page.body);

    // The next sign-in asks for a code.
    let mut other = Browser::new().unwrap();
    let asked = sign_in(&mut other, &t, &rp, &challenge, "rhea@corp.example.com", PASSWORD).await;
    assert!(asked.body.contains("Verify it’s you"), "{}", asked.body);
    let through = other.post(&action, &form_fields(&asked.body, &[("code", &oathtool(&secret, 30))])).await.unwrap();
    assert_eq!(through.status, StatusCode::SEE_OTHER, "{}", through.body);

    // Removed (the first form on the page is its Remove button): the password alone again.
    let removed = b.post(&account, &form_fields(&page.body, &[])).await.unwrap();
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    let page = b.get(&account).await.unwrap();
    assert!(page.body.contains("Only your password"), "{}", page.body);
    let again = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "rhea@corp.example.com", PASSWORD).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.body);
}

/// The claims of the ID token a token response carries.
fn id_claims(tokens: &Value) -> Value {
    let payload = tokens["id_token"].as_str().unwrap().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The redirect back to the application: its code redeemed, the ID token's claims.
async fn claims_after(t: &Tenant, rp: &Rp, page: &Page, verifier: &str) -> Value {
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let code = query(page.location.as_deref().unwrap()).get("code").cloned().unwrap();
    let tokens = redeem(t, rp, &code, verifier).await;
    assert_eq!(tokens.status(), StatusCode::OK);
    id_claims(&tokens.json().await.unwrap())
}

/// The key shown on a registration page.
fn shown_secret(page: &Page) -> String {
    page.body.split("id=\"secret\">").nth(1).and_then(|r| r.split('<').next()).unwrap().to_string()
}

/// The sign-in policy: required for everyone, a user without a method
/// registers an authenticator app in the middle of the sign-in (no way
/// around it: no "not now", a forged skip is refused, a user with a method
/// cannot register another there), sees the recovery codes once, and is
/// signed in with both factors; the next sign-in asks for the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_makes_people_register_a_second_factor() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    synced_user(&t, "nia@corp.example.com", "TklB", json!({})).await;
    let service = t.service();
    let policy = tenant::policy::SignInPolicy { everyone: true, ..Default::default() };
    service.set_sign_in_policy("test", policy).unwrap();
    let action = format!("{}/oauth2/authorize", issuer(&t));

    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "nia@corp.example.com", PASSWORD).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Add a sign-in method"), "{}", page.body);
    assert!(page.body.contains("requires a second sign-in method"), "{}", page.body);
    assert!(!page.body.contains("Not now"), "required: no skipping\n{}", page.body);
    let forged = b.post(&action, &form_fields(&page.body, &[("step", "skip")])).await.unwrap();
    assert!(forged.body.contains("can no longer be skipped"), "{}", forged.body);
    let secret = shown_secret(&forged);
    let wrong = b.post(&action, &form_fields(&forged.body, &[("code", "000000")])).await.unwrap();
    assert!(wrong.body.contains("Add a sign-in method") && wrong.body.contains("role=\"alert\""), "{}", wrong.body);
    assert_eq!(shown_secret(&wrong), secret, "the same key is shown again");
    let added = b.post(&action, &form_fields(&wrong.body, &[("code", &oathtool(&secret, 0))])).await.unwrap();
    assert!(added.body.contains("Authenticator app added"), "{}", added.body);
    assert_eq!(added.body.matches("<li><code>").count(), 10, "ten recovery codes: {}", added.body);
    let done = b.post(&action, &form_fields(&added.body, &[])).await.unwrap();
    let claims = claims_after(&t, &rp, &done, &verifier).await;
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]), "{claims}");
    assert_eq!(claims["acr"], "urn:idbridge:acr:mfa");
    // "Continue" works once.
    let again = b.post(&action, &form_fields(&added.body, &[])).await.unwrap();
    assert!(again.body.contains("took too long"), "{}", again.body);

    // From now on the sign-in asks for the code; registering another app
    // with only the password is refused.
    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "nia@corp.example.com", PASSWORD).await;
    assert!(page.body.contains("Verify it’s you"), "{}", page.body);
    let offer = tenant::mfa::offer_totp("x", "nia@corp.example.com");
    let sneaky = b
        .post(
            &action,
            &form_fields(
                &page.body,
                &[("step", "enrol-app"), ("secret", &offer.secret), ("code", &oathtool(&offer.secret, 0))],
            ),
        )
        .await
        .unwrap();
    assert!(sneaky.body.contains("has a sign-in method already"), "{}", sneaky.body);
    let methods = service.user_methods("nia@corp.example.com").unwrap().1;
    assert_eq!(methods.len(), 1, "nothing was added: {methods:?}");
    let audit = service.audit(50).unwrap();
    assert!(audit.iter().any(|e| e.action == "sign-in-policy"), "the policy change is audited");
}

/// The registration campaign: "not now" as often as the policy allows, then
/// registering is required; a user who skips is signed in by the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_campaign_can_be_skipped_a_set_number_of_times() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    synced_user(&t, "ole@corp.example.com", "T0xF", json!({})).await;
    let policy =
        tenant::policy::SignInPolicy { registration_campaign: true, campaign_skips: Some(1), ..Default::default() };
    t.service().set_sign_in_policy("test", policy).unwrap();
    let action = format!("{}/oauth2/authorize", issuer(&t));

    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "ole@corp.example.com", PASSWORD).await;
    assert!(page.body.contains("Not now") && page.body.contains("skip this 1 more time"), "{}", page.body);
    let skipped = b.post(&action, &form_fields(&page.body, &[("step", "skip")])).await.unwrap();
    let claims = claims_after(&t, &rp, &skipped, &verifier).await;
    assert_eq!(claims["amr"], json!(["pwd"]), "{claims}");

    let mut b = Browser::new().unwrap();
    let page = sign_in(&mut b, &t, &rp, &challenge, "ole@corp.example.com", PASSWORD).await;
    assert!(page.body.contains("Add a sign-in method") && !page.body.contains("Not now"), "{}", page.body);
    let refused = b.post(&action, &form_fields(&page.body, &[("step", "skip")])).await.unwrap();
    assert!(refused.body.contains("can no longer be skipped"), "{}", refused.body);

    // Without the campaign nobody is asked.
    t.service().set_sign_in_policy("test", tenant::policy::SignInPolicy::default()).unwrap();
    let page = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "ole@corp.example.com", PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

/// Who the policy covers: members of a named group (through a nested
/// group too) and administrators, not others; an application that requires
/// a second factor, and one that asks with `acr_values`, interrupt single
/// sign-on of a password-only session; `prompt=none` then hears
/// `interaction_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_administrators_and_applications_require_a_second_factor() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (verifier, challenge) = pkce();
    let ivy = synced_user(&t, "ivy@corp.example.com", "SVZZ", json!({})).await;
    synced_user(&t, "max@corp.example.com", "TUFY", json!({})).await;
    synced_user(&t, "uma@corp.example.com", "VU1B", json!({})).await;
    let group =
        |name: &str, members: Value| json!({"schemas": [super::GROUP], "displayName": name, "members": members});
    let inner =
        t.call(Method::POST, "/Groups", Some(&t.admin), Some(group("Payroll", json!([{"value": ivy["id"]}])))).await;
    assert_eq!(inner.status, StatusCode::CREATED, "{}", inner.body);
    let outer = t
        .call(Method::POST, "/Groups", Some(&t.admin), Some(group("Finance", json!([{"value": inner.body["id"]}]))))
        .await;
    assert_eq!(outer.status, StatusCode::CREATED, "{}", outer.body);
    let service = t.service();
    service
        .assign_role("test", tenant::objects::Kind::User, "uma@corp.example.com", tenant::console::Role::Reader)
        .unwrap();
    let unknown = tenant::policy::SignInPolicy { groups: vec!["No such group".into()], ..Default::default() };
    assert!(matches!(service.set_sign_in_policy("test", unknown), Err(tenant::TenantError::NotFound(_))));
    let policy =
        tenant::policy::SignInPolicy { groups: vec!["Finance".into()], administrators: true, ..Default::default() };
    let (saved, named) = service.set_sign_in_policy("test", policy).unwrap();
    assert_eq!(saved.groups, vec![outer.body["id"].as_str().unwrap().to_string()], "kept by id");
    assert_eq!(named[0].name, "Finance");

    let page = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "ivy@corp.example.com", PASSWORD).await;
    assert!(page.body.contains("members of Finance"), "nested membership counts: {}", page.body);
    let page = sign_in(&mut Browser::new().unwrap(), &t, &rp, &challenge, "uma@corp.example.com", PASSWORD).await;
    assert!(page.body.contains("of administrators"), "{}", page.body);
    let mut max = Browser::new().unwrap();
    let page = sign_in(&mut max, &t, &rp, &challenge, "max@corp.example.com", PASSWORD).await;
    claims_after(&t, &rp, &page, &verifier).await;

    // Max's password-only session: an application that requires a second
    // factor interrupts single sign-on; one that does not, does not.
    let strict = register(&t, false);
    service.set_client_require_mfa("test", &strict.client_id, true).unwrap();
    let sso = max.get(&authorize_url(&t, &rp, &challenge)).await.unwrap();
    assert_eq!(sso.status, StatusCode::SEE_OTHER, "{}", sso.body);
    let interrupted = max.get(&authorize_url(&t, &strict, &challenge)).await.unwrap();
    assert_eq!(interrupted.status, StatusCode::OK, "{}", interrupted.body);
    assert!(interrupted.body.contains("test app requires a second sign-in method"), "{}", interrupted.body);
    let silent = max.get(&format!("{}&prompt=none", authorize_url(&t, &strict, &challenge))).await.unwrap();
    assert_eq!(silent.status, StatusCode::SEE_OTHER);
    assert_eq!(
        query(silent.location.as_deref().unwrap()).get("error").map(String::as_str),
        Some("interaction_required")
    );
    // acr_values asks for it too; registering there signs in with both factors.
    let asking = format!("{}&acr_values=urn%3Aidbridge%3Aacr%3Amfa", authorize_url(&t, &rp, &challenge));
    let page = max.get(&asking).await.unwrap();
    assert!(page.body.contains("The application asked for a second sign-in method"), "{}", page.body);
    let action = format!("{}/oauth2/authorize", issuer(&t));
    let secret = shown_secret(&page);
    let added = max.post(&action, &form_fields(&page.body, &[("code", &oathtool(&secret, 0))])).await.unwrap();
    let done = max.post(&action, &form_fields(&added.body, &[])).await.unwrap();
    let claims = claims_after(&t, &rp, &done, &verifier).await;
    assert_eq!(claims["amr"], json!(["pwd", "otp", "mfa"]), "{claims}");
    assert_eq!(claims["acr"], "urn:idbridge:acr:mfa");
    // The session now holds both factors: the strict application signs in at once.
    let sso = max.get(&authorize_url(&t, &strict, &challenge)).await.unwrap();
    assert_eq!(sso.status, StatusCode::SEE_OTHER, "{}", sso.body);
    let discovery: Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", issuer(&t))).await.unwrap().json().await.unwrap();
    assert_eq!(discovery["acr_values_supported"], json!(["urn:idbridge:acr:1fa", "urn:idbridge:acr:mfa"]));
}

/// Adding a method takes a recent sign-in, and one with the second factor
/// for a user who has one: a browser left signed in cannot add its own way
/// in. "Verify it’s you" signs in again through Security info's own client
/// (prompt=login) and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_method_takes_a_fresh_sign_in() {
    let t = Tenant::start().await;
    let rp = register(&t, false);
    let (_, challenge) = pkce();
    let user = synced_user(&t, "ines@corp.example.com", "SU5FUw==", json!({})).await;
    let account = format!("{}/account", issuer(&t));
    let action = format!("{}/oauth2/authorize", issuer(&t));
    let mut b = Browser::new().unwrap();
    let signed_in = sign_in(&mut b, &t, &rp, &challenge, "ines@corp.example.com", PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
    let fresh = b.get(&account).await.unwrap();
    assert!(fresh.body.contains("id=\"add-app\""), "a new sign-in may add: {}", fresh.body);

    // The session grows old: the page offers "Verify it’s you", adding is refused.
    {
        let store = t.store();
        let conn = store.lock();
        conn.execute("UPDATE sessions SET created = created - 700", tenant::db::params![]).unwrap();
    }
    let stale = b.get(&account).await.unwrap();
    assert!(stale.body.contains("id=\"verify-again\"") && !stale.body.contains("id=\"add-app\""), "{}", stale.body);
    let refused = b.post(&account, &form_fields(&fresh.body, &[("action", "offer")])).await.unwrap();
    assert!(refused.body.contains("verify it’s you first") && !refused.body.contains("<svg"), "{}", refused.body);

    // Verify it's you: Security info's own sign-in, with prompt=login, and back.
    let again = b.get(&format!("{account}/sign-in?again=1")).await.unwrap();
    let to = again.location.clone().unwrap();
    assert!(to.starts_with("/oauth2/authorize?") && to.contains("prompt=login"), "{to}");
    let page = b.password_sign_in(&format!("{}{to}", issuer(&t)), "ines@corp.example.com", PASSWORD).await.unwrap();
    let back = page.location.clone().unwrap();
    assert!(back.starts_with(&format!("{account}/callback?code=")), "{back}");
    let home = b.get(&back).await.unwrap();
    assert_eq!(home.location.as_deref(), Some("/account"));
    let renewed = b.get(&account).await.unwrap();
    assert!(renewed.body.contains("id=\"add-app\""), "{}", renewed.body);

    // A user with a method: a fresh password-only session is not enough.
    let offer = tenant::mfa::offer_totp("idbridge", "ines@corp.example.com");
    {
        let store = t.store();
        let conn = store.lock();
        let id = user["id"].as_str().unwrap();
        tenant::mfa::confirm_totp(&conn, id, &offer.secret, &oathtool(&offer.secret, 0), "Phone").unwrap().unwrap();
        conn.execute("UPDATE sessions SET amr = 'pwd'", tenant::db::params![]).unwrap();
    }
    let weak = b.get(&account).await.unwrap();
    assert!(weak.body.contains("id=\"verify-again\""), "{}", weak.body);
    // Signing in again with the code makes it strong enough.
    let again = b.get(&format!("{account}/sign-in?again=1")).await.unwrap();
    let url = format!("{}{}", issuer(&t), again.location.unwrap());
    let code_page = b.password_sign_in(&url, "ines@corp.example.com", PASSWORD).await.unwrap();
    assert!(code_page.body.contains("Verify it’s you"), "{}", code_page.body);
    let done = b.post(&action, &form_fields(&code_page.body, &[("code", &oathtool(&offer.secret, 30))])).await.unwrap();
    b.get(done.location.as_deref().unwrap()).await.unwrap();
    let strong = b.get(&account).await.unwrap();
    assert!(strong.body.contains("id=\"add-app\""), "{}", strong.body);
}
