//! The admin console over HTTP: who gets in, what each role may do, CSRF,
//! the helpdesk's unlock, allowing held deletions, logs and their CSV.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::Browser;
use testkit::browser::Page;

use super::Tenant;
use super::signin::{PASSWORD, issuer, synced_user};
use tenant::console::Role;
use tenant::objects::Kind;

/// Signs `user` in to the console; the answer of the callback (a redirect
/// to /admin when the user holds a role).
async fn console_sign_in(b: &mut Browser, t: &Tenant, user: &str, password: &str) -> Page {
    let root = issuer(t);
    let first = b.get(&format!("{root}/admin")).await.unwrap();
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(first.location.as_deref(), Some("/admin/sign-in"));
    let start = b.get(&format!("{root}/admin/sign-in")).await.unwrap();
    let authorize = format!("{root}{}", start.location.unwrap());
    let back = b.password_sign_in(&authorize, user, password).await.unwrap();
    let callback = back.location.unwrap_or_else(|| panic!("no redirect after the password: {}", back.body));
    assert!(callback.starts_with(&format!("{root}/admin/callback")), "{callback}");
    b.get(&callback).await.unwrap()
}

/// The CSRF token of the signed-in console page `body`.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token");
    body.get(at + 19..).unwrap().split('"').next().unwrap().to_string()
}

fn audit_actions(t: &Tenant) -> Vec<String> {
    let service = t.service();
    service.audit(1000).unwrap().into_iter().map(|e| e.action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_roles_csrf_helpdesk_and_deletions() {
    let t = Tenant::start().await;
    let root = issuer(&t);
    let mut ids = std::collections::HashMap::new();
    for (i, name) in ["ada", "hal", "rei", "sam"].iter().enumerate() {
        let user = synced_user(&t, &format!("{name}@corp.example.com"), &format!("imm-{i}"), json!({})).await;
        ids.insert(*name, user["id"].as_str().unwrap().to_string());
    }
    let service = t.service();
    service.assign_role("test", Kind::User, "ada@corp.example.com", Role::GlobalAdmin).unwrap();
    service.assign_role("test", Kind::User, "hal@corp.example.com", Role::Helpdesk).unwrap();
    // The reader holds the role through a group.
    let group = t
        .call(
            Method::POST,
            &format!("{}/Groups", t.base),
            Some(&t.admin),
            Some(json!({"schemas": [super::GROUP], "displayName": "Auditors", "members": [{"value": ids["rei"]}]})),
        )
        .await;
    assert_eq!(group.status, StatusCode::CREATED, "{}", group.body);
    service.assign_role("test", Kind::Group, "Auditors", Role::Reader).unwrap();
    assert!(matches!(
        service.assign_role("test", Kind::User, "nobody@corp.example.com", Role::Reader),
        Err(tenant::TenantError::NotFound(_))
    ));
    assert!(Role::parse("root").is_err());

    // No role: refused after the sign-in, and audited.
    let mut sam = Browser::new().unwrap();
    let refused = console_sign_in(&mut sam, &t, "sam@corp.example.com", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("no administrator role"), "{}", refused.body);
    assert!(audit_actions(&t).contains(&"console-denied".to_string()));

    // The reader sees pages, with the console's headers, and may not write.
    let mut rei = Browser::new().unwrap();
    let signed_in = console_sign_in(&mut rei, &t, "rei@corp.example.com", PASSWORD).await;
    assert_eq!(signed_in.location.as_deref(), Some("/admin"));
    let raw = reqwest::Client::new()
        .get(format!("{root}/admin"))
        .header("cookie", rei.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.headers()["x-frame-options"], "DENY");
    let csp = raw.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("style-src 'self'"), "{csp}");
    let overview = raw.text().await.unwrap();
    assert!(overview.contains("rei@corp.example.com (reader)"), "{overview}");
    let rei_csrf = csrf(&overview);
    let denied = rei
        .post(&format!("{root}/admin/users/{}/unlock", ids["sam"]), &[("csrf".into(), rei_csrf.clone())])
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let users = rei.get(&format!("{root}/admin/users?q=sa")).await.unwrap();
    assert!(users.body.contains("sam@corp.example.com") && !users.body.contains("ada@corp.example.com"));
    let missing = rei.get(&format!("{root}/admin/users/no-such-id")).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Not found") && missing.body.contains("<nav"), "{}", missing.body);
    // A group of more members than a page: the pages, followed by their
    // "Next page" links, list every member once.
    let group_id = group.body["id"].as_str().unwrap().to_string();
    let mut expected = std::collections::BTreeSet::from([ids["rei"].clone()]);
    for i in 0..55 {
        let member = t.user(&format!("mëmber{i}@corp.example.com"), json!({})).await;
        let member_id = member["id"].as_str().unwrap().to_string();
        let add = json!({"schemas": [super::PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": member_id}]}]});
        let patched = t.call(Method::PATCH, &format!("{}/Groups/{group_id}", t.base), Some(&t.admin), Some(add)).await;
        assert!(patched.status.is_success(), "{}", patched.body);
        expected.insert(member_id);
    }
    let mut listed = Vec::new();
    let mut next = Some(format!("/admin/groups/{group_id}"));
    while let Some(path) = next.take() {
        let page = rei.get(&format!("{root}{}", path.replace("&amp;", "&"))).await.unwrap();
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("<dd>56</dd>"), "{}", page.body);
        for row in page.body.split("<a href=\"/admin/users/").skip(1) {
            listed.push(row.split('"').next().unwrap().to_string());
        }
        next =
            page.body.split(" rel=\"next\"").next().filter(|_| page.body.contains(" rel=\"next\"")).and_then(
                |before| before.rsplit("href=\"").next().map(|href| href.split('"').next().unwrap().to_string()),
            );
        assert!(listed.len() <= expected.len(), "pages repeat members: {listed:?}");
    }
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    assert_eq!(listed.into_iter().collect::<std::collections::BTreeSet<_>>(), expected);

    // Sam is locked out by wrong passwords; the helpdesk unlocks; sam signs in.
    let mut attacker = Browser::new().unwrap();
    let start = attacker.get(&format!("{root}/admin/sign-in")).await.unwrap();
    let authorize = format!("{root}{}", start.location.unwrap());
    let mut locked = false;
    for _ in 0..12 {
        let page = attacker.password_sign_in(&authorize, "sam@corp.example.com", "wrong").await.unwrap();
        if page.body.contains("locked") {
            locked = true;
            break;
        }
    }
    assert!(locked, "smart lockout never locked sam");
    let mut hal = Browser::new().unwrap();
    assert_eq!(console_sign_in(&mut hal, &t, "hal@corp.example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let sam_page = hal.get(&format!("{root}/admin/users/{}", ids["sam"])).await.unwrap();
    assert!(sam_page.body.contains("locked until"), "{}", sam_page.body);
    // A synchronised twin wanting sam's userName waits; its page says who holds it and why.
    let twin = t.user("sam@corp.example.com", super::synced("imm-twin")).await;
    let twin_page = hal.get(&format!("{root}/admin/users/{}", twin["id"].as_str().unwrap())).await.unwrap();
    let expected = format!("<a href=\"/admin/users/{}\">sam@corp.example.com</a>", ids["sam"]);
    assert!(
        twin_page.body.contains("Quarantined values")
            && twin_page.body.contains(&expected)
            && twin_page.body.contains("it held the value first, and the holder keeps it"),
        "{}",
        twin_page.body
    );
    let hal_csrf = csrf(&sam_page.body);
    // A forged form without the session's token is refused and audited.
    let forged = hal.post(&format!("{root}/admin/users/{}/unlock", ids["sam"]), &[]).await.unwrap();
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(audit_actions(&t).contains(&"console-csrf-refused".to_string()));
    // The helpdesk may not block sign-in (global administrators only).
    let block = hal
        .post(&format!("{root}/admin/users/{}/block", ids["sam"]), &[("csrf".into(), hal_csrf.clone())])
        .await
        .unwrap();
    assert_eq!(block.status, StatusCode::FORBIDDEN);
    let unlocked = hal
        .post(&format!("{root}/admin/users/{}/unlock", ids["sam"]), &[("csrf".into(), hal_csrf.clone())])
        .await
        .unwrap();
    assert_eq!(unlocked.status, StatusCode::SEE_OTHER, "{}", unlocked.body);
    let after = hal.get(&format!("{root}{}", unlocked.location.unwrap())).await.unwrap();
    assert!(after.body.contains("not locked") && after.body.contains("Unlocked"), "{}", after.body);
    let mut sam_again = Browser::new().unwrap();
    let sam_in = console_sign_in(&mut sam_again, &t, "sam@corp.example.com", PASSWORD).await;
    assert_eq!(sam_in.status, StatusCode::FORBIDDEN, "the password works again; sam still has no role");

    // The global administrator assigns a role through the form; bad input is refused.
    let mut ada = Browser::new().unwrap();
    assert_eq!(console_sign_in(&mut ada, &t, "ada@corp.example.com", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let roles = ada.get(&format!("{root}/admin/roles")).await.unwrap();
    let ada_csrf = csrf(&roles.body);
    let form = |who: &str, role: &str| {
        vec![
            ("csrf".to_string(), ada_csrf.clone()),
            ("kind".to_string(), "User".to_string()),
            ("who".to_string(), who.to_string()),
            ("role".to_string(), role.to_string()),
        ]
    };
    let assigned = ada.post(&format!("{root}/admin/roles"), &form("sam@corp.example.com", "reader")).await.unwrap();
    assert_eq!(assigned.status, StatusCode::SEE_OTHER);
    let unknown_role = ada.post(&format!("{root}/admin/roles"), &form("sam@corp.example.com", "root")).await.unwrap();
    assert_eq!(unknown_role.status, StatusCode::BAD_REQUEST);
    let unknown_user = ada.post(&format!("{root}/admin/roles"), &form("x@corp.example.com", "reader")).await.unwrap();
    assert_eq!(unknown_user.status, StatusCode::NOT_FOUND);
    let sam_role = tenant::console::role_of(&service.store().read(), &ids["sam"]).unwrap();
    assert_eq!(sam_role, Some(Role::Reader));

    // A threshold stop reported by a sync daemon; the administrator allows exactly those deletions.
    let report = json!({
        "connector": "lab", "host": "sync1", "version": "test", "finished": "2026-12-03T10:00:00Z",
        "status": "stopped", "intervalSecs": 60, "deletionsHeld": 2,
        "heldDeletions": [
            {"kind": "User", "object": "gone1@corp.example.com", "cloudId": "c1"},
            {"kind": "User", "object": "gone2@corp.example.com", "cloudId": "c2"}
        ]
    });
    let path = format!("{root}/hybrid/v1/sync-reports");
    assert_eq!(t.call(Method::POST, &path, Some(&t.sync), Some(report)).await.status, StatusCode::NO_CONTENT);
    let allowance = format!("{root}/hybrid/v1/deletion-allowances/lab");
    assert_eq!(t.call(Method::GET, &allowance, Some(&t.sync), None).await.status, StatusCode::NOT_FOUND);
    let lab = ada.get(&format!("{root}/admin/sync/lab")).await.unwrap();
    assert!(
        lab.body.contains("Allow these 2 deletions") && lab.body.contains("gone2@corp.example.com"),
        "{}",
        lab.body
    );
    let reader_lab = rei.get(&format!("{root}/admin/sync/lab")).await.unwrap();
    assert!(!reader_lab.body.contains("Allow these"), "a reader is not offered the button");
    let wrong_count = ada
        .post(
            &format!("{root}/admin/sync/lab/allow-deletions"),
            &[("csrf".into(), ada_csrf.clone()), ("count".into(), "5".into())],
        )
        .await
        .unwrap();
    assert_eq!(wrong_count.status, StatusCode::CONFLICT);
    let allowed = ada
        .post(
            &format!("{root}/admin/sync/lab/allow-deletions"),
            &[("csrf".into(), ada_csrf.clone()), ("count".into(), "2".into())],
        )
        .await
        .unwrap();
    assert_eq!(allowed.status, StatusCode::SEE_OTHER, "{}", allowed.body);
    let asked = t.call(Method::GET, &allowance, Some(&t.sync), None).await;
    assert_eq!(asked.status, StatusCode::OK);
    assert_eq!(asked.body["count"], 2);
    assert!(audit_actions(&t).contains(&"sync-allow-deletions".to_string()));
    // The next cycle ran through: the allowance is spent.
    let done = json!({"connector": "lab", "host": "sync1", "version": "test", "finished": "2026-12-03T10:01:00Z", "status": "success", "deleted": 2});
    assert_eq!(t.call(Method::POST, &path, Some(&t.sync), Some(done)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.call(Method::GET, &allowance, Some(&t.sync), None).await.status, StatusCode::NOT_FOUND);

    // The sign-in log: filters and CSV.
    let failures =
        ada.get(&format!("{root}/admin/sign-ins?user=sam%40corp.example.com&outcome=wrong-password")).await.unwrap();
    assert!(failures.body.contains("wrong-password") && !failures.body.contains(">success<"), "{}", failures.body);
    let csv = ada.get(&format!("{root}/admin/sign-ins?user=sam%40corp.example.com&format=csv")).await.unwrap();
    assert_eq!(csv.status, StatusCode::OK);
    let rows: Vec<&str> = csv.body.lines().collect();
    assert_eq!(
        rows.first().copied(),
        Some("\"time\",\"user\",\"method\",\"success\",\"reason\",\"application\",\"address\"")
    );
    assert!(rows.iter().filter(|r| r.contains("\"wrong-password\"")).count() >= 10, "{}", csv.body);
    // SAML applications: listed with the OIDC ones; the sign-in log shows their names and filters by them.
    let crm = tenant::saml_idp::App {
        id: "crm".into(),
        name: "Zoë CRM".into(),
        entity_id: "https://crm.example.net/sp".into(),
        acs_urls: vec!["https://crm.example.net/acs".into()],
        name_id_format: tenant::saml_idp::NameIdFormat::Persistent,
        attributes: Vec::new(),
        sign_response: false,
        allowed_groups: vec!["CRM Users".into()],
        require_signed: false,
        sp_certificates: Vec::new(),
        slo_url: None,
    };
    service.add_saml_app("test", &crm).unwrap();
    tenant::signin_log::record(
        &service.store().lock(),
        &tenant::signin_log::Attempt {
            user_name: "sam@corp.example.com",
            method: tenant::signin_log::Method::SingleSignOn,
            success: true,
            reason: "ok",
            application: Some("saml:crm"),
            address: Some("127.0.0.1"),
        },
    )
    .unwrap();
    let apps = ada.get(&format!("{root}/admin/applications")).await.unwrap();
    assert!(
        apps.body.contains("SAML applications")
            && apps.body.contains("https://crm.example.net/sp")
            && apps.body.contains("CRM Users")
            && apps.body.contains("/saml/crm/metadata"),
        "{}",
        apps.body
    );
    let by_app = ada.get(&format!("{root}/admin/sign-ins?application=saml%3Acrm")).await.unwrap();
    assert!(by_app.body.contains("single-sign-on") && by_app.body.contains("Zoë CRM (SAML)"), "{}", by_app.body);
    assert!(!by_app.body.contains("class=\"bad\">wrong-password<"), "only the application's sign-ins: {}", by_app.body);
    let audit_csv = ada.get(&format!("{root}/admin/audit?action=console-denied&format=csv")).await.unwrap();
    assert!(audit_csv.body.lines().count() >= 3, "{}", audit_csv.body);

    // Lineage: the console asks, a sync daemon picks the question up and answers.
    let lineage = format!("{root}/hybrid/v1/lineage");
    let asked =
        rei.post(&format!("{root}/admin/lineage/{}", ids["sam"]), &[("csrf".into(), rei_csrf.clone())]).await.unwrap();
    assert_eq!(asked.status, StatusCode::SEE_OTHER, "a reader may ask: {}", asked.body);
    let waiting = rei.get(&format!("{root}/admin/users/{}", ids["sam"])).await.unwrap();
    assert!(waiting.body.contains("answers with its next cycle"), "{}", waiting.body);
    let pending = t.call(Method::GET, &lineage, Some(&t.sync), None).await;
    assert_eq!(pending.body["immutableIds"], json!(["imm-3"]), "{}", pending.body);
    let not_here = json!({"objects": [{"immutableId": "imm-3", "found": false}]});
    assert_eq!(t.call(Method::POST, &lineage, Some(&t.sync), Some(not_here)).await.status, StatusCode::NO_CONTENT);
    let asked_again =
        rei.post(&format!("{root}/admin/lineage/{}", ids["sam"]), &[("csrf".into(), rei_csrf.clone())]).await.unwrap();
    assert_eq!(asked_again.status, StatusCode::SEE_OTHER);
    let answer = json!({"objects": [{
        "immutableId": "imm-3", "found": true, "source": "corp", "sourceObject": "uid=sam,ou=people,dc=corp,dc=example,dc=com",
        "attributes": [{"attribute": "userName", "outbound": "metaverse userPrincipalName (rule Out to tenant – User)", "inbound": "mail (rule In from LDAP – User)"}]
    }]});
    assert_eq!(t.call(Method::POST, &lineage, Some(&t.sync), Some(answer)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.call(Method::GET, &lineage, Some(&t.sync), None).await.body["immutableIds"], json!([]));
    let explained = rei.get(&format!("{root}/admin/users/{}", ids["sam"])).await.unwrap();
    assert!(
        explained.body.contains("uid=sam,ou=people,dc=corp,dc=example,dc=com")
            && explained.body.contains("mail (rule In from LDAP – User)"),
        "{}",
        explained.body
    );
    let too_many: Vec<_> = (0..101).map(|i| json!({"immutableId": format!("x{i}"), "found": false})).collect();
    let refused = t.call(Method::POST, &lineage, Some(&t.sync), Some(json!({"objects": too_many}))).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        t.call(Method::GET, &lineage, Some(&t.read), None).await.status,
        StatusCode::OK,
        "reading needs no write scope"
    );
    assert_eq!(
        t.call(Method::POST, &lineage, Some(&t.read), Some(json!({"objects": []}))).await.status,
        StatusCode::FORBIDDEN
    );

    // Every page answers for the reader.
    for page in [
        "",
        "/users",
        "/groups",
        "/sync",
        "/sign-ins",
        "/audit",
        "/domains",
        "/applications",
        "/agents",
        "/branding",
        "/roles",
    ] {
        let got = rei.get(&format!("{root}/admin{page}")).await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "/admin{page}: {}", got.body);
    }

    // Signing out ends the console session.
    let out = ada.post(&format!("{root}/admin/sign-out"), &[("csrf".into(), ada_csrf)]).await.unwrap();
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(ada.get(&format!("{root}/admin")).await.unwrap().status, StatusCode::SEE_OTHER);
}
