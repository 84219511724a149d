//! The tenant's SCIM API, started for real on a loopback port and driven over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tenant::tokens::{self, Scope};
use tenant_http::serve::{DEFAULT_MAX_BODY, ServeOptions, serve};
use testkit::TempDir;

#[path = "api/console.rs"]
mod console;
#[path = "api/pta.rs"]
mod pta_agents;
#[path = "api/signin.rs"]
mod signin;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const HYBRID: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

struct Tenant {
    base: String,
    admin: String,
    sync: String,
    read: String,
    client: reqwest::Client,
    dir: TempDir,
    service: tenant::Tenant,
    /// With `IDBRIDGE_TEST_TENANT_DB=postgres` (CI runs this suite both
    /// ways): the database the tenant lives in.
    pg: Option<testkit::Postgres>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A stopped tenant's data, to start it again.
struct Stopped {
    dir: TempDir,
    pg: Option<testkit::Postgres>,
}

struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Value,
}

/// Where a test tenant keeps its data: `dir`, or a throwaway PostgreSQL.
fn location(dir: &TempDir, pg: &Option<testkit::Postgres>) -> tenant::Location {
    match pg {
        Some(pg) => tenant::Location::Postgres {
            settings: pg.settings("tenant-api-tests"),
            secrets_key: dir.join(tenant::secrets::KEY_FILE),
        },
        None => tenant::Location::Directory(dir.path().to_path_buf()),
    }
}

fn on_postgres() -> bool {
    std::env::var("IDBRIDGE_TEST_TENANT_DB").as_deref() == Ok("postgres")
}

impl Tenant {
    async fn start() -> Tenant {
        Tenant::start_configured(|_| {}).await
    }

    /// A new tenant with `configure` applied to its database first (settings).
    async fn start_configured(configure: impl FnOnce(&tenant::db::Connection)) -> Tenant {
        let dir = TempDir::new("tenant").unwrap();
        let pg = on_postgres().then(|| testkit::Postgres::start().unwrap());
        Tenant::start_with(Stopped { dir, pg }, configure).await
    }

    async fn start_in(stopped: Stopped) -> Tenant {
        Tenant::start_with(stopped, |_| {}).await
    }

    /// Starts with `configure` applied to the database first (settings).
    async fn start_with(stopped: Stopped, configure: impl FnOnce(&tenant::db::Connection)) -> Tenant {
        let Stopped { dir, pg } = stopped;
        // The tenant's warnings and errors appear with a failing test's output.
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
        let (service, _) = tenant::Tenant::open_or_create_at(&location(&dir, &pg), "example.test").unwrap();
        let store = service.store().clone();
        configure(&store.lock());
        let (admin, sync, read) = {
            let conn = store.lock();
            let _ = tenant::domains::add(&conn, "corp.example.com", tenant::domains::AuthType::ManagedPhs, false);
            (
                tokens::create(&conn, Scope::Admin, None, None).unwrap().1,
                tokens::create(&conn, Scope::Sync, None, None).unwrap().1,
                tokens::create(&conn, Scope::ScimRead, None, None).unwrap().1,
            )
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions {
            listen: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            tls: None,
            public_url: None,
            max_body: DEFAULT_MAX_BODY,
            loopback_as_localhost: false,
        };
        let served = service.clone();
        tokio::spawn(async move {
            serve(served, options, move |_, base| ready_tx.send(base.to_string()).unwrap(), async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        let base = tokio::task::spawn_blocking(move || ready_rx.recv().unwrap()).await.unwrap();
        Tenant { base, admin, sync, read, client: reqwest::Client::new(), dir, service, pg, stop: Some(stop_tx) }
    }

    /// The running tenant's database.
    fn store(&self) -> std::sync::Arc<tenant::Store> {
        self.service.store().clone()
    }

    /// The running tenant, as the command line administers it.
    fn service(&self) -> tenant::Tenant {
        self.service.clone()
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) };
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header(header::CONTENT_TYPE, "application/scim+json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    async fn create_user(&self, body: Value) -> Value {
        let r = self.call(Method::POST, "/Users", Some(&self.sync), Some(body)).await;
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{}: {}", r.status, r.body);
        r.body
    }

    async fn user(&self, user_name: &str, extra: Value) -> Value {
        let mut body = json!({"schemas": [USER], "userName": user_name});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        self.create_user(body).await
    }

    async fn stop(mut self) -> Stopped {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Stopped { dir: self.dir, pg: self.pg }
    }
}

/// `n` browsers walk `authorize` up to the password step for `user`, then
/// all post `password` at once; the pages they get back.
async fn concurrent_password_posts(authorize: &str, user: &str, password: &str, n: usize) -> Vec<testkit::Page> {
    let action = authorize.split('?').next().unwrap().to_string();
    let mut ready = Vec::with_capacity(n);
    for _ in 0..n {
        let mut b = testkit::Browser::new().unwrap();
        let first = b.get(authorize).await.unwrap();
        let second = b.enter_username(authorize, &first, user).await.unwrap();
        ready.push((b, testkit::form_fields(&second.body, &[("password", password)])));
    }
    let attempts: Vec<_> = ready
        .into_iter()
        .map(|(mut b, form)| {
            let action = action.clone();
            tokio::spawn(async move { b.post(&action, &form).await.unwrap() })
        })
        .collect();
    let mut pages = Vec::with_capacity(n);
    for a in attempts {
        pages.push(a.await.unwrap());
    }
    pages
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn synced(immutable_id: &str) -> Value {
    json!({HYBRID: {"immutableId": immutable_id}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_endpoints() {
    let t = Tenant::start().await;
    let spc = t.call(Method::GET, "/ServiceProviderConfig", Some(&t.read), None).await;
    assert_eq!(spc.status, StatusCode::OK);
    assert_eq!(spc.headers[header::CONTENT_TYPE], "application/scim+json");
    assert_eq!(spc.body["patch"]["supported"], true);
    assert_eq!(spc.body["bulk"]["maxOperations"], 1000);
    let schemas = t.call(Method::GET, "/Schemas", Some(&t.read), None).await;
    assert_eq!(schemas.body["totalResults"], 5);
    let user = t.call(Method::GET, &format!("/Schemas/{USER}"), Some(&t.read), None).await;
    assert_eq!(user.body["name"], "User");
    let types = t.call(Method::GET, "/ResourceTypes", Some(&t.read), None).await;
    assert_eq!(types.body["totalResults"], 3);
    let contact = t.call(Method::GET, "/ResourceTypes/Contact", Some(&t.read), None).await;
    assert_eq!(contact.body["endpoint"], "/Contacts");
    assert_eq!(t.call(Method::GET, "/Schemas/urn:nope", Some(&t.read), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.call(Method::GET, "/Nope", Some(&t.read), None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_lifecycle_with_etags() {
    let t = Tenant::start().await;
    let r = t
        .call(Method::POST, "/Users", Some(&t.sync), Some(json!({"schemas": [USER], "userName": "bjensen@corp.example.com", "name": {"givenName": "Barbara"}, "externalId": "bj"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let uid = id(&r.body);
    let location = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(location, format!("{}/Users/{uid}", t.base));
    assert_eq!(r.body["meta"]["location"], location.as_str());
    let etag = r.headers[header::ETAG].to_str().unwrap().to_string();
    assert_eq!(etag, "W/\"1\"");
    assert!(r.body["meta"]["created"].as_str().unwrap().ends_with('Z'));

    let g = t.call(Method::GET, &format!("/Users/{uid}"), Some(&t.read), None).await;
    assert_eq!(g.body["userName"], "bjensen@corp.example.com");
    let not_modified =
        t.call_with(Method::GET, &format!("/Users/{uid}"), Some(&t.read), None, &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);

    let put_body = json!({"schemas": [USER], "userName": "bjensen@corp.example.com", "title": "Guide"});
    let stale = t
        .call_with(
            Method::PUT,
            &format!("/Users/{uid}"),
            Some(&t.sync),
            Some(put_body.clone()),
            &[("If-Match", "W/\"7\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let put =
        t.call_with(Method::PUT, &format!("/Users/{uid}"), Some(&t.sync), Some(put_body), &[("If-Match", &etag)]).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["title"], "Guide");
    assert!(put.body.get("name").is_none(), "PUT replaces");
    assert_eq!(put.body["meta"]["version"], "W/\"2\"");

    let patch = json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "emails", "value": [{"value": "b@corp.example.com", "type": "work"}]}, {"op": "replace", "path": "active", "value": false}]});
    let p = t.call(Method::PATCH, &format!("/Users/{uid}"), Some(&t.sync), Some(patch)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body["emails"][0]["type"], "work");
    assert_eq!(p.body["active"], false);

    let d =
        t.call_with(Method::DELETE, &format!("/Users/{uid}"), Some(&t.sync), None, &[("If-Match", "W/\"1\"")]).await;
    assert_eq!(d.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        t.call(Method::DELETE, &format!("/Users/{uid}"), Some(&t.sync), None).await.status,
        StatusCode::NO_CONTENT
    );
    let gone = t.call(Method::GET, &format!("/Users/{uid}"), Some(&t.read), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["status"], "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_sorting_paging_projection() {
    let t = Tenant::start().await;
    for (i, (name, title, ext)) in
        [("anna", "Engineer", "A1"), ("bob", "Manager", "B2"), ("carla", "Engineer", "C3"), ("dave", "Director", "d4")]
            .iter()
            .enumerate()
    {
        t.user(
            &format!("{name}@corp.example.com"),
            json!({"title": title, "externalId": ext, "active": i % 2 == 0, "emails": [{"value": format!("{name}@mail.example.com"), "type": if i == 0 { "home" } else { "work" }}]}),
        )
        .await;
    }
    let q = |f: &str| format!("/Users?filter={}", urlencode(f));
    let count = |r: &Reply| r.body["totalResults"].as_u64().unwrap();
    for (filter, expected) in [
        (r#"userName eq "ANNA@corp.example.com""#, 1),
        (r#"userName ne "anna@corp.example.com""#, 3),
        (r#"userName co "ar""#, 1),
        (r#"userName sw "b""#, 1),
        (r#"userName ew "example.com""#, 4),
        (r#"title gt "Engineer""#, 1),
        (r#"title ge "Engineer""#, 3),
        (r#"title lt "Engineer""#, 1),
        (r#"title le "Engineer""#, 3),
        (r#"title pr"#, 4),
        (r#"nickName pr"#, 0),
        (r#"externalId eq "a1""#, 0),
        (r#"externalId eq "A1""#, 1),
        (r#"active eq true"#, 2),
        (r#"title eq "Engineer" and active eq true"#, 2),
        (r#"title eq "Manager" or title eq "Director""#, 2),
        (r#"not (title eq "Engineer")"#, 2),
        (r#"(title eq "Engineer" or title eq "Manager") and not (userName sw "c")"#, 2),
        (r#"emails[type eq "work" and value co "@mail"]"#, 3),
        (r#"emails.type eq "home""#, 1),
        (r#"meta.created gt "2000-01-01T00:00:00Z""#, 4),
    ] {
        let r = t.call(Method::GET, &q(filter), Some(&t.read), None).await;
        assert_eq!(r.status, StatusCode::OK, "{filter}: {}", r.body);
        assert_eq!(count(&r), expected, "{filter}");
    }
    let bad = t.call(Method::GET, &q("userName eq"), Some(&t.read), None).await;
    assert_eq!((bad.status, bad.body["scimType"].as_str()), (StatusCode::BAD_REQUEST, Some("invalidFilter")));
    let bad = t.call(Method::GET, &q("shoeSize eq 1"), Some(&t.read), None).await;
    assert_eq!(bad.body["scimType"], "invalidFilter");

    let sorted = t
        .call(Method::GET, "/Users?sortBy=userName&sortOrder=descending&startIndex=2&count=2", Some(&t.read), None)
        .await;
    let names: Vec<&str> =
        sorted.body["Resources"].as_array().unwrap().iter().map(|u| u["userName"].as_str().unwrap()).collect();
    assert_eq!(names, ["carla@corp.example.com", "bob@corp.example.com"]);
    assert_eq!(
        (
            sorted.body["totalResults"].as_u64(),
            sorted.body["startIndex"].as_u64(),
            sorted.body["itemsPerPage"].as_u64()
        ),
        (Some(4), Some(2), Some(2))
    );

    let projected =
        t.call(Method::GET, &format!("{}&attributes=userName", q(r#"userName sw "a""#)), Some(&t.read), None).await;
    let u = &projected.body["Resources"][0];
    assert!(u.get("title").is_none() && u.get("meta").is_none() && u["id"].is_string() && u["userName"].is_string());
    let excluded = t
        .call(Method::GET, &format!("{}&excludedAttributes=emails,title", q(r#"userName sw "a""#)), Some(&t.read), None)
        .await;
    let u = &excluded.body["Resources"][0];
    assert!(u.get("emails").is_none() && u.get("title").is_none() && u["meta"].is_object());

    let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "title eq \"Engineer\"", "attributes": ["userName"], "sortBy": "userName", "count": 1});
    let s = t.call(Method::POST, "/Users/.search", Some(&t.read), Some(search.clone())).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    assert_eq!(
        (s.body["totalResults"].as_u64(), s.body["Resources"][0]["userName"].as_str()),
        (Some(2), Some("anna@corp.example.com"))
    );
    let root = t.call(Method::POST, "/.search", Some(&t.read), Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "displayName pr or userName pr"}))).await;
    assert_eq!(root.body["totalResults"], 4, "{}", root.body);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_members() {
    let t = Tenant::start().await;
    let a = id(&t.user("a@corp.example.com", json!({})).await);
    let b = id(&t.user("b@corp.example.com", json!({})).await);
    let c = id(&t.user("c@corp.example.com", json!({})).await);
    let g = t
        .call(
            Method::POST,
            "/Groups",
            Some(&t.sync),
            Some(json!({"schemas": [GROUP], "displayName": "Staff", "members": [{"value": a}, {"value": b}]})),
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
    let gid = id(&g.body);
    assert_eq!(g.body["members"].as_array().unwrap().len(), 2);
    assert_eq!(g.body["members"][0]["type"], "User");
    let add = json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": c}]}]});
    let p = t.call(Method::PATCH, &format!("/Groups/{gid}?excludedAttributes=members"), Some(&t.sync), Some(add)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.get("members").is_none());
    let remove =
        json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": format!("members[value eq \"{a}\"]")}]});
    t.call(Method::PATCH, &format!("/Groups/{gid}"), Some(&t.sync), Some(remove)).await;
    let now = t.call(Method::GET, &format!("/Groups/{gid}"), Some(&t.read), None).await;
    let members: std::collections::HashSet<String> =
        now.body["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().to_string()).collect();
    assert_eq!(members, [b.clone(), c.clone()].into_iter().collect());
    assert_eq!(now.body["meta"]["version"], "W/\"3\"");
    let user_b = t.call(Method::GET, &format!("/Users/{b}"), Some(&t.read), None).await;
    assert_eq!(user_b.body["groups"][0]["value"], gid.as_str());
    assert_eq!(user_b.body["groups"][0]["display"], "Staff");
    let filtered = t
        .call(
            Method::GET,
            &format!("/Groups?filter={}", urlencode(&format!("members[value eq \"{c}\"]"))),
            Some(&t.read),
            None,
        )
        .await;
    assert_eq!(filtered.body["totalResults"], 1);
    let missing = json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": "no-such-id"}]}]});
    let bad = t.call(Method::PATCH, &format!("/Groups/{gid}"), Some(&t.sync), Some(missing)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Deleting a user removes its memberships.
    t.call(Method::DELETE, &format!("/Users/{c}"), Some(&t.sync), None).await;
    let after = t.call(Method::GET, &format!("/Groups/{gid}"), Some(&t.read), None).await;
    assert_eq!(after.body["members"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_with_references_and_failures() {
    let t = Tenant::start().await;
    let body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [
            // The group refers to a user created later in the same request.
            {"method": "POST", "path": "/Groups", "bulkId": "g1", "data": {"schemas": [GROUP], "displayName": "Team", "members": [{"value": "bulkId:u1"}]}},
            {"method": "POST", "path": "/Users", "bulkId": "u1", "data": {"schemas": [USER], "userName": "u1@corp.example.com"}},
            {"method": "POST", "path": "/Users", "bulkId": "bad", "data": {"schemas": [USER], "userName": "u1@corp.example.com"}},
            {"method": "PATCH", "path": "/Users/bulkId:u1", "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Lead"}]}}
        ]
    });
    let r = t.call(Method::POST, "/Bulk", Some(&t.sync), Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ops = r.body["Operations"].as_array().unwrap();
    let status: Vec<&str> = ops.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["201", "201", "409", "200"], "{}", r.body);
    assert_eq!(ops[2]["response"]["scimType"], "uniqueness");
    let group = t.call(Method::GET, ops[0]["location"].as_str().unwrap(), Some(&t.read), None).await;
    let user_location = ops[1]["location"].as_str().unwrap();
    assert!(user_location.ends_with(group.body["members"][0]["value"].as_str().unwrap()));
    assert_eq!(t.call(Method::GET, user_location, Some(&t.read), None).await.body["title"], "Lead");
    // The failure sent the request round again with a savepoint per
    // operation: what the first try wrote was rolled back, not kept twice.
    let teams = t
        .call(Method::GET, &format!("/Groups?filter={}", urlencode(r#"displayName eq "Team""#)), Some(&t.read), None)
        .await;
    assert_eq!(teams.body["totalResults"], 1, "{}", teams.body);

    // PUT and PATCH by id, and the order of errors: a PUT to a missing object
    // is 404 whatever its body, a bad body or PATCH is 400, and after a
    // failure the request runs again, operation by operation, with the same
    // results for the operations that succeeded (applied once).
    let u1 = user_location.rsplit('/').next().unwrap();
    let checked_first = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [
        {"method": "PUT", "path": format!("/Users/{u1}"), "data": {"schemas": [USER], "userName": "u1@corp.example.com", "title": "Chief"}},
        {"method": "PATCH", "path": format!("/Users/{u1}"), "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "Ünal Ærø"}]}},
        {"method": "PUT", "path": "/Users/no-such-object", "data": {"schemas": [USER]}},
        {"method": "POST", "path": "/Users", "bulkId": "v", "data": {"schemas": [USER], "userName": 7}},
        {"method": "PATCH", "path": format!("/Users/{u1}"), "data": {"schemas": [PATCH], "Operations": "none"}}
    ]});
    let r = t.call(Method::POST, "/Bulk", Some(&t.sync), Some(checked_first)).await;
    let status: Vec<&str> =
        r.body["Operations"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["200", "200", "404", "400", "400"], "{}", r.body);
    let user = t.call(Method::GET, user_location, Some(&t.read), None).await;
    assert_eq!(
        (&user.body["title"], &user.body["displayName"]),
        (&json!("Chief"), &json!("Ünal Ærø")),
        "{}",
        user.body
    );

    let fail_fast = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "failOnErrors": 1, "Operations": [
        {"method": "POST", "path": "/Users", "bulkId": "x", "data": {"schemas": [USER], "userName": "u1@corp.example.com"}},
        {"method": "POST", "path": "/Users", "bulkId": "y", "data": {"schemas": [USER], "userName": "y@corp.example.com"}}
    ]});
    let r = t.call(Method::POST, "/Bulk", Some(&t.sync), Some(fail_fast)).await;
    assert_eq!(r.body["Operations"].as_array().unwrap().len(), 1, "stops after the first error: {}", r.body);
    let y = t
        .call(
            Method::GET,
            &format!("/Users?filter={}", urlencode(r#"userName eq "y@corp.example.com""#)),
            Some(&t.read),
            None,
        )
        .await;
    assert_eq!(y.body["totalResults"], 0);

    let too_many: Vec<Value> = (0..1001).map(|i| json!({"method": "DELETE", "path": format!("/Users/{i}")})).collect();
    let r = t
        .call(
            Method::POST,
            "/Bulk",
            Some(&t.sync),
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": too_many})),
        )
        .await;
    assert_eq!((r.status, r.body["scimType"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("tooMany")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniqueness_quarantine_and_release() {
    let t = Tenant::start().await;
    let cloud = id(&t.user("x@corp.example.com", json!({})).await);
    // A cloud-only object with a taken value fails.
    let dup = t
        .call(Method::POST, "/Users", Some(&t.sync), Some(json!({"schemas": [USER], "userName": "X@corp.example.com"})))
        .await;
    assert_eq!((dup.status, dup.body["scimType"].as_str()), (StatusCode::CONFLICT, Some("uniqueness")));
    // A synchronised object is created with the value quarantined.
    t.call(Method::POST, "/Users", Some(&t.admin), None).await;
    let mut s = json!({"schemas": [USER], "userName": "x@corp.example.com"});
    s.as_object_mut().unwrap().extend(synced("QUJDRA==").as_object().unwrap().clone());
    let r = t.call(Method::POST, "/Users", Some(&t.sync), Some(s)).await;
    // The cloud object x@ is no admin: soft match would join them; block it to see quarantine.
    assert_eq!(r.status, StatusCode::OK, "soft match: {}", r.body);
    assert_eq!(id(&r.body), cloud);
    // Now a second synchronised object wants the same userName.
    let mut s2 = json!({"schemas": [USER], "userName": "x@corp.example.com", "displayName": "Second"});
    s2.as_object_mut().unwrap().extend(synced("RUZHSA==").as_object().unwrap().clone());
    let r = t.call(Method::POST, "/Users", Some(&t.sync), Some(s2)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let second = id(&r.body);
    let placeholder = r.body["userName"].as_str().unwrap();
    assert!(placeholder.starts_with("x+") && placeholder.ends_with("@example.test"), "{placeholder}");
    // What is stored is the changed body, not the text of the one that was sent.
    let stored = t.call(Method::GET, &format!("/Users/{second}"), Some(&t.read), None).await;
    assert_eq!(stored.body["userName"].as_str(), Some(placeholder), "{}", stored.body);
    let errors = &r.body[HYBRID]["provisioningErrors"];
    assert_eq!(errors[0]["attribute"], "userName");
    assert_eq!(errors[0]["value"], "x@corp.example.com");
    // An SMTP proxy address also counts across objects: a group may not take the user's.
    t.call(Method::PATCH, &format!("/Users/{cloud}"), Some(&t.sync), Some(json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": format!("{HYBRID}:proxyAddresses"), "value": ["SMTP:team@corp.example.com"]}]}))).await;
    let g = t.call(Method::POST, "/Groups", Some(&t.sync), Some(json!({"schemas": [GROUP, HYBRID], "displayName": "Team", HYBRID: {"proxyAddresses": ["smtp:TEAM@corp.example.com"]}}))).await;
    assert_eq!(g.status, StatusCode::CONFLICT, "{}", g.body);
    // The holder goes away: the quarantined value is applied by itself.
    assert_eq!(
        t.call(Method::DELETE, &format!("/Users/{cloud}"), Some(&t.sync), None).await.status,
        StatusCode::NO_CONTENT
    );
    let released = t.call(Method::GET, &format!("/Users/{second}"), Some(&t.read), None).await;
    assert_eq!(released.body["userName"], "x@corp.example.com", "{}", released.body);
    assert!(released.body[HYBRID].get("provisioningErrors").is_none(), "{}", released.body);
    // Several wait: a released value goes to the lowest immutableId, not to
    // the one that asked first, and the others now wait for the new holder.
    let synced_user = |imm: &str| {
        let mut u = json!({"schemas": [USER], "userName": "y@corp.example.com", "displayName": format!("Ÿ {imm}")});
        u.as_object_mut().unwrap().extend(synced(imm).as_object().unwrap().clone());
        u
    };
    let mut ids = std::collections::HashMap::new();
    for imm in ["WFla", "TU5P", "QkJC"] {
        let r = t.call(Method::POST, "/Users", Some(&t.sync), Some(synced_user(imm))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.insert(imm, id(&r.body));
    }
    let quarantine = format!("{}/hybrid/v1/quarantine", t.base.trim_end_matches("/scim/v2"));
    let listed = t.call(Method::GET, &quarantine, Some(&t.sync), None).await;
    assert_eq!((listed.status, &listed.body["total"]), (StatusCode::OK, &json!(2)), "{}", listed.body);
    let first = &listed.body["entries"][0];
    assert_eq!((&first["object"]["immutableId"], &first["holder"]["immutableId"]), (&json!("TU5P"), &json!("WFla")));
    assert_eq!((&first["reason"], &first["value"]), (&json!("held-first"), &json!("y@corp.example.com")));
    assert_eq!(t.call(Method::GET, &quarantine, None, None).await.status, StatusCode::UNAUTHORIZED);
    t.call(Method::DELETE, &format!("/Users/{}", ids["WFla"]), Some(&t.sync), None).await;
    let winner = t.call(Method::GET, &format!("/Users/{}", ids["QkJC"]), Some(&t.read), None).await;
    assert_eq!(winner.body["userName"], "y@corp.example.com", "the lowest immutableId: {}", winner.body);
    let loser = t.call(Method::GET, &format!("/Users/{}", ids["TU5P"]), Some(&t.read), None).await;
    let error = &loser.body[HYBRID]["provisioningErrors"][0];
    assert_eq!(error["holder"], ids["QkJC"].as_str(), "{}", loser.body);
    let reason = error["reason"].as_str().unwrap();
    assert!(reason.contains("Ÿ QkJC") || reason.contains("y@corp.example.com (object"), "{reason}");
    assert!(reason.contains("immutableId QkJC") && reason.contains("lowest immutableId"), "{reason}");
    let listed = t.call(Method::GET, &quarantine, Some(&t.read), None).await;
    assert_eq!(listed.body["total"], 1, "{}", listed.body);
    assert_eq!(listed.body["entries"][0]["reason"], "lowest-immutable-id", "{}", listed.body);
    // userName must be in a verified domain.
    let r = t
        .call(Method::POST, "/Users", Some(&t.sync), Some(json!({"schemas": [USER], "userName": "z@unverified.org"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["detail"].as_str().unwrap().contains("verified domain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_and_soft_match() {
    let t = Tenant::start().await;
    let cloud = id(&t.user("d@corp.example.com", json!({"title": "cloud"})).await);
    let admin = id(&t.user("boss@corp.example.com", json!({"roles": [{"value": "admin"}]})).await);
    let mut incoming = json!({"schemas": [USER], "userName": "d@corp.example.com", "title": "synced"});
    incoming.as_object_mut().unwrap().extend(synced("SU1NVVQ=").as_object().unwrap().clone());
    let soft = t.call(Method::POST, "/Users", Some(&t.sync), Some(incoming.clone())).await;
    assert_eq!((soft.status, id(&soft.body)), (StatusCode::OK, cloud.clone()), "soft match on userName");
    assert_eq!(soft.body[HYBRID]["immutableId"], "SU1NVVQ=");
    assert_eq!(soft.body[HYBRID]["dirSyncEnabled"], true);
    incoming["title"] = json!("again");
    let hard = t.call(Method::POST, "/Users", Some(&t.sync), Some(incoming)).await;
    assert_eq!(
        (hard.status, id(&hard.body), hard.body["title"].as_str()),
        (StatusCode::OK, cloud.clone(), Some("again")),
        "hard match"
    );
    // An administrator is never matched: the incoming object is created, its userName quarantined.
    let mut to_admin = json!({"schemas": [USER], "userName": "boss@corp.example.com"});
    to_admin.as_object_mut().unwrap().extend(synced("QURNSU4=").as_object().unwrap().clone());
    let r = t.call(Method::POST, "/Users", Some(&t.sync), Some(to_admin)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_ne!(id(&r.body), admin);
    // The immutableId never changes.
    let change = json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": format!("{HYBRID}:immutableId"), "value": "T1RIRVI="}]});
    let r = t.call(Method::PATCH, &format!("/Users/{cloud}"), Some(&t.sync), Some(change)).await;
    assert_eq!((r.status, r.body["scimType"].as_str()), (StatusCode::BAD_REQUEST, Some("mutability")));
    // With soft match blocked, a cloud object with the same userName is not taken over.
    {
        let store = t.store();
        let conn = store.lock();
        let mut s = tenant::Settings::load(&conn).unwrap();
        s.block_soft_match = true;
        s.save(&conn).unwrap();
    }
    let other = id(&t.user("e@corp.example.com", json!({})).await);
    let mut e = json!({"schemas": [USER], "userName": "e@corp.example.com"});
    e.as_object_mut().unwrap().extend(synced("RUVFRQ==").as_object().unwrap().clone());
    let r = t.call(Method::POST, "/Users", Some(&t.sync), Some(e)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_ne!(id(&r.body), other);
    assert!(r.body[HYBRID]["provisioningErrors"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_authorisation() {
    let t = Tenant::start().await;
    let no_token = t.call(Method::GET, "/Users", None, None).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert!(no_token.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(t.call(Method::GET, "/Users", Some("idb_wrong"), None).await.status, StatusCode::UNAUTHORIZED);
    let read_write = t
        .call(Method::POST, "/Users", Some(&t.read), Some(json!({"schemas": [USER], "userName": "r@corp.example.com"})))
        .await;
    assert_eq!(read_write.status, StatusCode::FORBIDDEN);
    assert_eq!(t.call(Method::GET, "/Users", Some(&t.read), None).await.status, StatusCode::OK);

    let raw = |body: &'static str, ct: &'static str| {
        t.client
            .post(format!("{}/Users", t.base))
            .bearer_auth(&t.sync)
            .header(header::CONTENT_TYPE, ct)
            .body(body)
            .send()
    };
    let r = raw("{not json", "application/scim+json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["scimType"], "invalidSyntax");
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = "x".repeat(DEFAULT_MAX_BODY + 1);
    let r = t
        .client
        .post(format!("{}/Users", t.base))
        .bearer_auth(&t.sync)
        .header(header::CONTENT_TYPE, "application/scim+json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = t
        .call(
            Method::POST,
            "/Users",
            Some(&t.sync),
            Some(json!({"schemas": [USER], "userName": "u@corp.example.com", "shoeSize": 44})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.body["detail"].as_str().unwrap().contains("shoeSize"));
    let bad_patch = t.call(Method::PATCH, "/Users/whatever", Some(&t.sync), Some(json!({"Operations": []}))).await;
    assert_eq!(bad_patch.status, StatusCode::BAD_REQUEST);

    // Every write is audited with the token that made it.
    t.user("audited@corp.example.com", json!({})).await;
    let store = t.store();
    let entries = tenant::audit::recent(&store.lock(), 100).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.action == "create" && e.resource_type.as_deref() == Some("User") && !e.actor.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let t = Tenant::start().await;
    let u = id(&t.user("keep@corp.example.com", json!({"title": "kept"})).await);
    let stopped = t.stop().await;
    let t2 = Tenant::start_in(stopped).await;
    let r = t2.call(Method::GET, &format!("/Users/{u}"), Some(&t2.read), None).await;
    assert_eq!(r.body["title"], "kept");
}

/// The third-party conformance checker scim2-tester (PyPI), run against this
/// server. Every check must pass except the ones listed here, each with the
/// RFC text that makes our answer the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim2_tester_conformance() {
    const ACCEPTED: &[(&str, &str, &str)] = &[
        (
            "check_add_attribute",
            "hybrid:2.0:Object:immutableId",
            "RFC 7643 §2.2: an immutable attribute SHALL NOT be updated; the checker adds a second immutableId after setting one",
        ),
        (
            "check_add_attribute",
            "hybrid:2.0:Object:proxyAddresses",
            "RFC 7644 §3.5.2.1: add to a multi-valued attribute adds to the values present; the checker expects only the new value",
        ),
        (
            "check_remove_attribute",
            "hybrid:2.0:Object'",
            "RFC 7643 §2.2: removing the whole extension would clear the immutable immutableId",
        ),
    ];
    let scim = std::env::var("IDBRIDGE_SCIM_CLI")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/scim-venv/bin/scim"));
    assert!(
        scim.exists(),
        "scim2-cli is not installed at {}: run scripts/test (it installs scim2-cli and scim2-tester)",
        scim.display()
    );
    let t = Tenant::start().await;
    {
        // scim2-tester makes random UUIDs its userNames; the verified-domain
        // policy (tested in uniqueness_quarantine_and_release) is off for this run.
        let store = t.store();
        let conn = store.lock();
        let mut s = tenant::Settings::load(&conn).unwrap();
        s.require_verified_domain = false;
        s.save(&conn).unwrap();
    }
    let args = vec![
        "--url".to_string(),
        t.base.clone(),
        "-h".to_string(),
        format!("Authorization: Bearer {}", t.admin),
        "test".to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(&scim).args(args).output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let successes = lines.iter().filter(|l| l.starts_with("SUCCESS")).count();
    let mut unexpected = Vec::new();
    let mut accepted = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("ERROR") || line.starts_with("CRITICAL") {
            let reason = lines.get(i + 1).copied().unwrap_or("");
            if ACCEPTED.iter().any(|(check, needle, _)| line.contains(check) && reason.contains(needle)) {
                accepted += 1;
            } else {
                unexpected.push(format!("{line} — {}", reason.trim()));
            }
        }
    }
    assert!(unexpected.is_empty(), "scim2-tester failures:\n{}", unexpected.join("\n"));
    assert!(successes >= 200, "only {successes} checks passed:\n{text}");
    eprintln!("scim2-tester: {successes} checks passed, {accepted} accepted exceptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_and_no_plain_http_off_loopback() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = TempDir::new("tenant-tls").unwrap();
    let ca = testkit::TestCa::generate().unwrap();
    let (service, _) = tenant::Tenant::open_or_create(dir.path(), "example.test").unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some((ca.server_cert.clone(), ca.server_key.clone())),
        public_url: None,
        max_body: DEFAULT_MAX_BODY,
        loopback_as_localhost: false,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(
            service,
            options,
            move |addr, base| {
                assert!(base.starts_with("https://"));
                ready_tx.send(addr).unwrap();
            },
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
    });
    let addr = tokio::task::spawn_blocking(move || ready_rx.recv().unwrap()).await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_file_iter(&ca.ca_cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // Silent clients (no handshake at all) hold up nobody else.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let healthz = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await.unwrap();
        reply
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), healthz)
        .await
        .expect("an HTTPS request is answered while silent connections are open");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(lower.contains("x-content-type-options: nosniff"), "{reply}");
    assert!(lower.contains("strict-transport-security: max-age="), "HSTS on HTTPS: {reply}");
    // The silent ones are closed once the handshake timeout has passed.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        tenant_http::serve::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(20),
        silent[0].read(&mut byte),
    )
    .await
    .expect("a connection without a handshake is closed by the server");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let _ = stop_tx.send(());

    // Plain HTTP anywhere but loopback is refused.
    let (service, _) =
        tenant::Tenant::open_or_create(TempDir::new("tenant-open").unwrap().path(), "example.test").unwrap();
    let open = ServeOptions {
        listen: "0.0.0.0:0".parse().unwrap(),
        tls: None,
        public_url: None,
        max_body: DEFAULT_MAX_BODY,
        loopback_as_localhost: false,
    };
    let err = serve(service, open, |_, _| {}, async {}).await.unwrap_err();
    assert!(err.to_string().contains("refusing plain HTTP"), "{err}");
}

/// Over its per-token rate a client gets 429 with Retry-After; idbridge's
/// connector waits as told and every object arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_gets_429_and_the_connector_waits() {
    let dir = TempDir::new("tenant").unwrap();
    let pg = on_postgres().then(|| testkit::Postgres::start().unwrap());
    let t = Tenant::start_with(Stopped { dir, pg }, |conn| {
        let mut settings = tenant::Settings::load(conn).unwrap();
        settings.rate_limit_per_sec = 2;
        settings.save(conn).unwrap();
    })
    .await;
    let mut limited = None;
    for _ in 0..20 {
        let r = t.call(Method::GET, "/Users?count=1", Some(&t.read), None).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("20 requests at once exceed 2 per second (burst 4)");
    let wait: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(r.body["status"], "429", "{}", r.body);
    // Another token is not held up by this one.
    assert_eq!(t.call(Method::GET, "/Users?count=1", Some(&t.admin), None).await.status, StatusCode::OK);

    let mut target =
        connector_scim::ScimTarget::new(&t.base, t.sync.clone(), None, std::time::Duration::from_secs(30)).unwrap();
    target.bulk = false;
    target.attempts = 20;
    let ops: Vec<sync::engine::ExportOp> = (0..8)
        .map(|i| sync::engine::ExportOp::Create {
            kind: directory::ObjectKind::User,
            resource: std::sync::Arc::new(sync::engine::Resource::new(json!({
                "schemas": [USER, HYBRID], "userName": format!("zoë{i}@corp.example.com"),
                "externalId": format!("YW5jaG9y{i}"), HYBRID: {"immutableId": format!("YW5jaG9y{i}")}
            }))),
        })
        .collect();
    let results = sync::engine::Target::apply(&mut target, ops.clone()).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Some(_)))), "{results:?}");
    let list = t.call(Method::GET, "/Users?count=0", Some(&t.admin), None).await;
    assert_eq!(list.body["totalResults"], 8);
}

/// A create whose answer is lost (here: a proxy that forwards it and then
/// answers 502 — a fault the tenant itself cannot produce) is not sent
/// again blindly: the connector looks the object up by its externalId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_create_is_looked_up_not_repeated() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = Tenant::start().await;
    let posts = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_base = format!("http://{}/scim/v2", listener.local_addr().unwrap());
    {
        let (posts, upstream) = (posts.clone(), t.base.trim_end_matches("/scim/v2").to_string());
        let client = reqwest::Client::new();
        let forward = move |request: axum::extract::Request| {
            let (posts, upstream, client) = (posts.clone(), upstream.clone(), client.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let url = format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
                let mut req = client.request(parts.method.clone(), url).body(body);
                for (name, value) in &parts.headers {
                    if name != header::HOST {
                        req = req.header(name, value);
                    }
                }
                let answer = req.send().await.unwrap();
                let status = answer.status();
                let bytes = answer.bytes().await.unwrap();
                if parts.method == Method::POST && posts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::response::Response::builder()
                        .status(502)
                        .body(axum::body::Body::from("bad gateway"))
                        .unwrap();
                }
                axum::response::Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "application/scim+json")
                    .body(axum::body::Body::from(bytes))
                    .unwrap()
            }
        };
        let app = axum::Router::new().fallback(forward);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    let mut target =
        connector_scim::ScimTarget::new(&proxy_base, t.sync.clone(), None, std::time::Duration::from_secs(30)).unwrap();
    target.bulk = false;
    let op = sync::engine::ExportOp::Create {
        kind: directory::ObjectKind::User,
        resource: std::sync::Arc::new(sync::engine::Resource::new(json!({
            "schemas": [USER, HYBRID], "userName": "jürgen@corp.example.com",
            "externalId": "anVlcmdlbg", HYBRID: {"immutableId": "anVlcmdlbg"}
        }))),
    };
    let results = sync::engine::Target::apply(&mut target, vec![op.clone()]).await;
    let Ok(Some(created)) = &results[0] else { panic!("{results:?}") };
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the create went out once; then a lookup, not a second POST");
    let list = t.call(Method::GET, "/Users", Some(&t.admin), None).await;
    assert_eq!(list.body["totalResults"], 1);
    assert_eq!(list.body["Resources"][0]["id"].as_str(), Some(created.as_str()));
}

/// A client that starts a request and never finishes its headers is cut
/// off, and so is a keep-alive connection left idle after an answer — at
/// the header timeout, which idbridge's own clients stay well inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_and_idle_connections_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Tenant::start().await;
    let addr = t.base.trim_start_matches("http://").trim_end_matches("/scim/v2").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Both wait at once; the bound is far below IDLE_TIMEOUT (60 s), which
    // is what an idle keep-alive connection was once thought to get.
    let bound = tenant_http::serve::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(20);
    assert!(bound < tenant_http::serve::IDLE_TIMEOUT);
    let mut answer = Vec::new();
    let mut rest = Vec::new();
    let (read, idle_read) = tokio::join!(
        tokio::time::timeout(bound, slow.read_to_end(&mut answer)),
        tokio::time::timeout(bound, idle.read_to_end(&mut rest)),
    );
    assert!(read.is_ok(), "the connection was still open after the header timeout");
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(idle_read.is_ok(), "an idle keep-alive connection was still open after the header timeout");
    // Meanwhile and after, others are served.
    assert_eq!(t.call(Method::GET, "/ServiceProviderConfig", Some(&t.read), None).await.status, StatusCode::OK);
}

/// The database (signing keys, secrets) is created for its owner only, and
/// a data directory that already existed (a shared one) keeps its mode.
#[test]
fn the_database_is_private_and_an_existing_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let shared = TempDir::new("tenant-shared").unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (store, fresh) = tenant::open_or_create(shared.path(), "example.test").unwrap();
    assert!(fresh);
    drop(store);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(shared.path()), 0o755, "not chmod-ed: the directory was not made here");
    assert_eq!(mode(&shared.join(tenant::DB_FILE)), 0o600);
    let made = shared.join("fresh-data");
    tenant::open_or_create(&made, "example.test").unwrap();
    assert_eq!(mode(&made), 0o700, "a directory made here is the owner's only");
}

/// Signing keys and federation client secrets are sealed in the database
/// under a key file beside it: the database alone does not give them away.
#[test]
fn signing_keys_and_client_secrets_are_sealed_at_rest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("tenant-sealed").unwrap();
    let (store, _) = tenant::open_or_create(dir.path(), "example.test").unwrap();
    {
        let conn = store.lock();
        tenant::oidc::keys::active(&conn, tenant::oidc::keys::Alg::Rs256).unwrap();
        tenant::domains::add(&conn, "fed.example", tenant::domains::AuthType::ManagedPhs, false).unwrap();
        let idp = tenant::federation::OidcIdp {
            issuer: "https://idp.fed.example".into(),
            client_id: "idbridge".into(),
            client_secret: "sëcret-of-the-idp".into(),
            immutable_id_claim: "immutable_id".into(),
            upn_claim: None,
        };
        tenant::federation::federate(&conn, "fed.example", &tenant::federation::Federation::Oidc(idp)).unwrap();
    }
    drop(store);
    let key = dir.join(tenant::secrets::KEY_FILE);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // What the database file itself holds.
    let raw =
        rusqlite::Connection::open_with_flags(dir.join(tenant::DB_FILE), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let pkcs8: Vec<u8> = raw.query_row("SELECT pkcs8 FROM signing_keys", [], |r| r.get(0)).unwrap();
    assert!(pkcs8.starts_with(b"enc1") && ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).is_err());
    let federation: String =
        raw.query_row("SELECT federation FROM domains WHERE name = 'fed.example'", [], |r| r.get(0)).unwrap();
    assert!(!federation.contains("sëcret") && federation.contains("enc1:"), "{federation}");
    drop(raw);
    // Opened again (the key file beside it): everything works as before.
    let store = tenant::open_existing(dir.path()).unwrap();
    let conn = store.lock();
    let Some(tenant::federation::Federation::Oidc(idp)) = tenant::federation::load(&conn, "fed.example").unwrap()
    else {
        panic!("the federation settings are gone")
    };
    assert_eq!(idp.client_secret, "sëcret-of-the-idp");
    let key = tenant::oidc::keys::active(&conn, tenant::oidc::keys::Alg::Rs256).unwrap();
    let token = tenant::oidc::jwt::sign(&key, &serde_json::json!({"sub": "x", "exp": 4_000_000_000i64})).unwrap();
    assert!(tenant::oidc::jwt::verify_own(&conn, &token).unwrap().is_some());
}

/// A person opening the tenant's address sees a page with the ways in; a
/// client asking for JSON gets the same links; an expired My Apps sign-in
/// says so and offers to start again.
#[tokio::test]
async fn the_front_page_and_an_expired_sign_in_explain_themselves() {
    let t = Tenant::start().await;
    let root = t.base.trim_end_matches("/scim/v2").to_string();
    let http = reqwest::Client::new();
    let page = http.get(format!("{root}/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("My Apps") && html.contains("/.well-known/openid-configuration"), "{html}");
    let json: serde_json::Value =
        http.get(format!("{root}/")).header("accept", "application/json").send().await.unwrap().json().await.unwrap();
    assert_eq!(json["scim"], format!("{root}/scim/v2"));
    let expired = http.get(format!("{root}/myapps/callback?code=old&state=old")).send().await.unwrap();
    assert_eq!(expired.status(), 400);
    let html = expired.text().await.unwrap();
    assert!(html.contains("Sign-in expired") && html.contains("Start again"), "{html}");
}

/// A sync daemon's fencing token: once a write with epoch 3 was admitted,
/// a write with epoch 2 of the same lineage (a daemon replaced while
/// paused) is refused, nothing of it applied; the newer one goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_sync_daemon_is_fenced_off() {
    let t = Tenant::start().await;
    let fence = proto::hybrid::SYNC_FENCE_HEADER;
    async fn create(t: &Tenant, name: &str, token: Option<&str>) -> Reply {
        let body = json!({"schemas": [USER], "userName": format!("{name}@corp.example.com")});
        let headers: Vec<(&str, &str)> = token.map(|v| (proto::hybrid::SYNC_FENCE_HEADER, v)).into_iter().collect();
        t.call_with(Method::POST, "/Users", Some(&t.sync), Some(body), &headers).await
    }
    assert_eq!(create(&t, "e3", Some("lineageA.3")).await.status, StatusCode::CREATED);
    let stale = create(&t, "e2", Some("lineageA.2")).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert!(stale.body["detail"].as_str().unwrap().contains("epoch 3"), "{}", stale.body);
    assert_eq!(create(&t, "e3b", Some("lineageA.3")).await.status, StatusCode::CREATED);
    assert_eq!(create(&t, "e4", Some("lineageA.4")).await.status, StatusCode::CREATED);
    // Another state (lineage) has its own epochs; no token, no check.
    assert_eq!(create(&t, "b1", Some("lineageB.1")).await.status, StatusCode::CREATED);
    assert_eq!(create(&t, "none", None).await.status, StatusCode::CREATED);
    let bad = create(&t, "bad", Some("lineage-ü.x")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let list =
        t.call(Method::GET, "/Users?filter=userName%20eq%20%22e2@corp.example.com%22", Some(&t.read), None).await;
    assert_eq!(list.body["totalResults"], 0, "the stale write left nothing");
    // Reads are never fenced.
    let read = t.call_with(Method::GET, "/Users", Some(&t.sync), None, &[(fence, "lineageA.1")]).await;
    assert_eq!(read.status, StatusCode::OK);
}

/// Sync reports: a sync token posts them, bad ones are refused with the
/// reason and stored nowhere, an admin token reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_are_checked_stored_and_read_back() {
    let t = Tenant::start().await;
    let path = proto::hybrid::SYNC_REPORTS_PATH;
    let url = format!("{}{path}", t.base.trim_end_matches("/scim/v2"));
    let good = json!({"connector": "corp-ü", "host": "dc1 pid 7", "version": "0.1.0", "finished": "2026-12-03T10:00:00Z",
        "status": "stopped", "intervalSecs": 5, "created": 3, "deletionsHeld": 12,
        "errors": [{"object": "uid=zoë,dc=x", "message": "refused"}]});
    assert_eq!(t.call(Method::POST, &url, Some(&t.sync), Some(good.clone())).await.status, StatusCode::NO_CONTENT);
    let long = "x".repeat(65);
    let many: Vec<Value> = (0..101).map(|i| json!({"object": format!("o{i}"), "message": "m"})).collect();
    for (bad, why) in [
        (json!({"connector": "corp", "host": "h", "version": "v", "finished": "f", "status": "maybe"}), "status"),
        (json!({"connector": long, "host": "h", "version": "v", "finished": "f", "status": "success"}), "connector"),
        (json!({"connector": " ", "host": "h", "version": "v", "finished": "f", "status": "success"}), "connector"),
        (
            json!({"connector": "c", "host": "h", "version": "v", "finished": "f", "status": "success", "errors": many}),
            "errors",
        ),
        (
            json!({"connector": "c", "host": "h", "version": "v", "finished": "f", "status": "success", "extra": 1}),
            "extra",
        ),
    ] {
        let r = t.call(Method::POST, &url, Some(&t.sync), Some(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.body);
        assert!(r.body["detail"].as_str().unwrap_or_default().contains(why), "{why}: {}", r.body);
    }
    assert_eq!(t.call(Method::POST, &url, Some(&t.read), Some(good)).await.status, StatusCode::FORBIDDEN);
    let admin_url = format!("{}/admin/v1/sync-reports", t.base.trim_end_matches("/scim/v2"));
    assert_eq!(t.call(Method::GET, &admin_url, Some(&t.sync), None).await.status, StatusCode::FORBIDDEN);
    let r = t.call(Method::GET, &admin_url, Some(&t.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let reports = r.body["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "only the good report was stored: {}", r.body);
    assert_eq!(reports[0]["report"]["connector"], "corp-ü");
    assert_eq!(reports[0]["report"]["deletionsHeld"], 12);
}
