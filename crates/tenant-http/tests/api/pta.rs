//! Pass-through authentication through the tenant's real endpoints, with a
//! scripted agent speaking the protocol (register, long poll, open, answer):
//! every outcome reaches the sign-in page with the right words.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Browser;

use super::Tenant;

fn issuer(t: &Tenant) -> String {
    t.base.trim_end_matches("/scim/v2").to_string()
}

/// A tenant whose corp.example.com signs in by pass-through, with the user
/// pat, a public client, and `registrations` one-time agent tokens.
async fn pass_through_tenant(registrations: usize) -> (Tenant, Vec<String>, String) {
    pass_through_tenant_waiting(registrations, None).await
}

/// Like [`pass_through_tenant`], with the validator timeout set.
async fn pass_through_tenant_waiting(
    registrations: usize,
    pta_timeout_secs: Option<u64>,
) -> (Tenant, Vec<String>, String) {
    let t = Tenant::start_configured(|conn| {
        if let Some(secs) = pta_timeout_secs {
            let mut settings = tenant::store::Settings::load(conn).unwrap();
            settings.pta_timeout_secs = secs;
            settings.save(conn).unwrap();
        }
    })
    .await;
    let (tokens, client_id) = {
        let store = t.store();
        let conn = store.lock();
        tenant::domains::set_auth(&conn, "corp.example.com", tenant::domains::AuthType::ManagedPta).unwrap();
        let (c, _) = tenant::oidc::clients::add(
            &conn,
            "t",
            &["http://127.0.0.1:9/cb".to_string()],
            true,
            tenant::oidc::keys::Alg::Rs256,
        )
        .unwrap();
        let tokens = (0..registrations).map(|_| tenant::pta::create_token(&conn, 3600).unwrap()).collect();
        (tokens, c.id)
    };
    t.user("pat@corp.example.com", super::synced("UEFU")).await;
    (t, tokens, client_id)
}

/// Registers an agent with `token` and `key`: its id and credential.
async fn register(
    t: &Tenant,
    http: &reqwest::Client,
    token: &str,
    key: &pta::AgentKey,
    name: &str,
) -> (String, String) {
    let reg: Value = http
        .post(format!("{}/pta/v1/register", issuer(t)))
        .json(&json!({"token": token, "public_key": key.public(), "name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (reg["agent_id"].as_str().unwrap().to_string(), reg["credential"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_outcome_reaches_the_page_and_answers_count_once() {
    let (t, tokens, client_id) = pass_through_tenant(1).await;
    let token = tokens[0].clone();
    let http = reqwest::Client::new();
    let key = pta::AgentKey::generate();
    let (agent_id, credential) = register(&t, &http, &token, &key, "scripted").await;
    // The token was for one registration only.
    let again = http
        .post(format!("{}/pta/v1/register", issuer(&t)))
        .json(&json!({"token": token, "public_key": key.public(), "name": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);

    // The scripted agent: answers each request with the next scripted outcome; keeps what it saw.
    let script: Arc<Mutex<Vec<pta::Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let seen_requests: Arc<Mutex<Vec<pta::Sealed>>> = Arc::new(Mutex::new(Vec::new()));
    let largest_batch = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (script, seen_requests, http, issuer, credential, agent_id) =
            (script.clone(), seen_requests.clone(), http.clone(), issuer(&t), credential.clone(), agent_id.clone());
        let largest_batch = largest_batch.clone();
        tokio::spawn(async move {
            let mut seen = pta::Seen::default();
            loop {
                let Ok(r) = http.get(format!("{issuer}/pta/v1/poll?wait_secs=2")).bearer_auth(&credential).send().await
                else {
                    continue;
                };
                let body: Value = r.json().await.unwrap_or_default();
                let batch = serde_json::from_value::<Vec<pta::Sealed>>(body["requests"].clone()).unwrap_or_default();
                largest_batch.fetch_max(batch.len(), std::sync::atomic::Ordering::SeqCst);
                for sealed in batch {
                    let (creds, answer_key) =
                        pta::open(&key, &agent_id, &sealed, tenant::util::now_secs(), &mut seen).unwrap();
                    assert!(creds.username.ends_with("@corp.example.com"), "{}", creds.username);
                    seen_requests.lock().unwrap().push(sealed.clone());
                    let outcome = script.lock().unwrap().pop().unwrap_or(pta::Outcome::WrongPassword);
                    let _ = http
                        .post(format!("{issuer}/pta/v1/respond"))
                        .bearer_auth(&credential)
                        .json(&json!({
                            "request_id": sealed.request_id,
                            "outcome": outcome,
                            "mac": answer_key.sign(&sealed.request_id, outcome),
                        }))
                        .send()
                        .await;
                }
            }
        });
    }
    let authorize = format!(
        "{}/oauth2/authorize?client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=openid&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        issuer(&t)
    );
    // Wait until the agent is polling.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    use pta::Outcome::*;
    for (outcome, words) in [
        (Success, None),
        (WrongPassword, Some("user name or password is incorrect")),
        (AccountDisabled, Some("account is disabled")),
        (AccountExpired, Some("account has expired")),
        (PasswordExpired, Some("password has expired")),
        (MustChangePassword, Some("must change your password")),
        (LockedOut, Some("locked on your organisation")),
        (LogonHours, Some("logon hours")),
        (DirectoryUnreachable, Some("directory cannot be reached")),
    ] {
        script.lock().unwrap().push(outcome);
        let page =
            Browser::new().unwrap().password_sign_in(&authorize, "pat@corp.example.com", "whatever").await.unwrap();
        match words {
            None => assert!(page.location.is_some_and(|l| l.contains("code=")), "{outcome:?}: {}", page.body),
            Some(w) => assert!(page.body.contains(w), "{outcome:?}: {}", page.body),
        }
    }
    // An answer counts once; an answer to a request nobody waits for is refused; a wrong credential is turned away.
    let old = seen_requests.lock().unwrap()[0].clone();
    let replay: Value = http
        .post(format!("{}/pta/v1/respond", issuer(&t)))
        .bearer_auth(&credential)
        .json(&json!({"request_id": old.request_id, "outcome": "success"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["accepted"], false);
    // Rotation: a new credential works; the old one keeps working for a short grace.
    let rotated: Value = http
        .post(format!("{}/pta/v1/rotate", issuer(&t)))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_credential = rotated["credential"].as_str().unwrap().to_string();
    assert_ne!(new_credential, credential);
    for c in [&new_credential, &credential] {
        let r = http.get(format!("{}/pta/v1/poll?wait_secs=0", issuer(&t))).bearer_auth(c).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let stranger = http
        .get(format!("{}/pta/v1/poll?wait_secs=1", issuer(&t)))
        .bearer_auth("idb_not-an-agent")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);
    // The audit log names the outcome of each.
    let store = t.store();
    let results: Vec<String> = tenant::audit::recent(&store.lock(), 200)
        .unwrap()
        .iter()
        .filter_map(|e| e.detail.as_ref().and_then(|d| d["result"].as_str()).map(str::to_string))
        .collect();
    for r in ["pta-success", "pta-account-disabled", "pta-locked-out"] {
        assert!(results.iter().any(|x| x == r), "{r}: {results:?}");
    }

    // 100 wrong passwords at once: the lockout threshold (10) bounds how many
    // reach the directory, and they reach it one at a time.
    script.lock().unwrap().clear();
    let before = seen_requests.lock().unwrap().len();
    largest_batch.store(0, std::sync::atomic::Ordering::SeqCst);
    let pages = super::concurrent_password_posts(&authorize, "pat@corp.example.com", "wrong-Pässword", 100).await;
    let locked = pages.iter().filter(|page| page.body.contains("temporarily locked")).count();
    let reached = seen_requests.lock().unwrap().len() - before;
    assert!(reached <= 10, "{reached} of 100 concurrent wrong passwords reached the agent");
    assert!(locked >= 90, "{locked} were refused as locked");
    assert!(largest_batch.load(std::sync::atomic::Ordering::SeqCst) <= 1, "one validation per user at a time");
    t.stop().await;
}

/// Without an agent online, a known and an unknown user of a pass-through
/// domain get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_answers_alike_for_known_and_unknown_users() {
    let t = Tenant::start().await;
    let store = t.store();
    tenant::domains::set_auth(&store.lock(), "corp.example.com", tenant::domains::AuthType::ManagedPta).unwrap();
    t.user("pat@corp.example.com", super::synced("UEFU")).await;
    let broker = tenant::pta::Broker::new(std::time::Duration::from_secs(1));
    let policy = tenant::signin::LockoutPolicy::default();
    let mut answers = Vec::new();
    for user in ["pat@corp.example.com", "nobody@corp.example.com"] {
        let answer = tenant::signin::sign_in(
            &store,
            &broker,
            user,
            "pässword",
            &tenant::signin::Origin::at("192.0.2.1"),
            policy,
        )
        .await
        .unwrap();
        answers.push(answer.map(|_| ()).unwrap_err().to_string());
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].contains("not available"), "{answers:?}");
    t.stop().await;
}

/// Only the agent a request was leased to, signing with that request's
/// answer key, can answer it: another registered agent cannot sign anyone in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_counts_only_from_the_lease_holder_with_its_mac() {
    let (t, tokens, client_id) = pass_through_tenant(2).await;
    let http = reqwest::Client::new();
    let (key_a, key_b) = (pta::AgentKey::generate(), pta::AgentKey::generate());
    let (id_a, cred_a) = register(&t, &http, &tokens[0], &key_a, "agent").await;
    let (_, cred_b) = register(&t, &http, &tokens[1], &key_b, "agent").await;
    // A low-order public key is refused at registration.
    let weak = http
        .post(format!("{}/pta/v1/register", issuer(&t)))
        .json(&json!({"token": "idb_x", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "name": "weak"}))
        .send()
        .await
        .unwrap();
    assert_eq!(weak.status(), StatusCode::BAD_REQUEST);
    // Only agent A polls; B is registered but idle.
    let poll_a = {
        let (http, issuer, cred_a) = (http.clone(), issuer(&t), cred_a.clone());
        tokio::spawn(async move {
            loop {
                let body: Value = http
                    .get(format!("{issuer}/pta/v1/poll?wait_secs=2"))
                    .bearer_auth(&cred_a)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let batch: Vec<pta::Sealed> = serde_json::from_value(body["requests"].clone()).unwrap_or_default();
                if let Some(sealed) = batch.into_iter().next() {
                    return sealed;
                }
            }
        })
    };
    let authorize = format!(
        "{}/oauth2/authorize?client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=openid&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        issuer(&t)
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let signing_in = tokio::spawn(async move {
        Browser::new().unwrap().password_sign_in(&authorize, "pat@corp.example.com", "wrong").await.unwrap()
    });
    let sealed = poll_a.await.unwrap();
    let (_, answer_key) =
        pta::open(&key_a, &id_a, &sealed, tenant::util::now_secs(), &mut pta::Seen::default()).unwrap();
    let respond = async |credential: &str, outcome: &str, mac: &str| -> bool {
        let r: Value = http
            .post(format!("{}/pta/v1/respond", issuer(&t)))
            .bearer_auth(credential)
            .json(&json!({"request_id": sealed.request_id, "outcome": outcome, "mac": mac}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["accepted"] == true
    };
    let success_mac = answer_key.sign(&sealed.request_id, pta::Outcome::Success);
    assert!(!respond(&cred_b, "success", "").await, "another agent, no MAC");
    assert!(!respond(&cred_b, "success", &success_mac).await, "another agent, even with A's MAC");
    assert!(!respond(&cred_a, "success", "").await, "the lease holder without a MAC");
    let wrong_mac = answer_key.sign(&sealed.request_id, pta::Outcome::WrongPassword);
    assert!(!respond(&cred_a, "success", &wrong_mac).await, "a MAC for another outcome");
    assert!(respond(&cred_a, "wrong-password", &wrong_mac).await);
    let page = signing_in.await.unwrap();
    assert!(page.body.contains("user name or password is incorrect"), "{}", page.body);
    t.stop().await;
}

/// An agent that went away (its process killed in the middle of a poll, the
/// connection closed) is offline at once: the sign-in says no agent is online
/// straight away instead of waiting the whole validator timeout (a minute
/// here) and then saying the validator did not answer. Nothing is lost: a
/// request an agent has taken still waits for that agent's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_poll_was_cut_is_offline_at_once() {
    let (t, tokens, client_id) = pass_through_tenant_waiting(1, Some(60)).await;
    let http = reqwest::Client::new();
    let key = pta::AgentKey::generate();
    let (_, credential) = register(&t, &http, &tokens[0], &key, "short-lived").await;
    let metrics_token =
        tenant::tokens::create(&t.store().lock(), tenant::tokens::Scope::Metrics, None, None).unwrap().1;
    let agents_online = async || -> String {
        let text = http
            .get(format!("{}/metrics", issuer(&t)))
            .bearer_auth(&metrics_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().find(|l| l.starts_with("idbridge_pta_agents_online ")).unwrap_or_default().to_string()
    };
    // The agent's long poll, on a connection of its own, cut while it waits.
    let poll = {
        let (issuer, credential) = (issuer(&t), credential.clone());
        tokio::spawn(async move {
            let own = reqwest::Client::new();
            let _ = own.get(format!("{issuer}/pta/v1/poll?wait_secs=25")).bearer_auth(&credential).send().await;
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while agents_online().await != "idbridge_pta_agents_online 1" {
        assert!(std::time::Instant::now() < deadline, "the agent never showed as online");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    poll.abort();
    let _ = poll.await;

    let authorize = format!(
        "{}/oauth2/authorize?client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=openid&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        issuer(&t)
    );
    let page = Browser::new().unwrap().password_sign_in(&authorize, "pat@corp.example.com", "whatever").await.unwrap();
    assert!(page.body.contains("not available"), "{}", page.body);
    assert!(!page.body.contains("did not answer"), "{}", page.body);
    assert_eq!(agents_online().await, "idbridge_pta_agents_online 0");
    let store = t.store();
    let reasons: Vec<String> = tenant::audit::recent(&store.lock(), 20)
        .unwrap()
        .iter()
        .filter_map(|e| e.detail.as_ref().and_then(|d| d["result"].as_str()).map(str::to_string))
        .collect();
    assert!(reasons.iter().any(|r| r == "pta-no-agent"), "{reasons:?}");
    t.stop().await;
}
