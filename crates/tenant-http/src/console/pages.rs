//! The console's pages and the forms they post. Reads go straight to the
//! database (read-only connections); every change goes through the
//! tenant's service, which writes it with its audit entry.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::Value;
use tenant::db::{Connection, OptionalExtension, params};

use super::view::{self, Viewer, action, age, csrf_field, seconds, when, when_text};
use super::{Admin, authorised, change, html, message, not_found, read};
use crate::scim::AppState;
use tenant::console::{self, Permission, Role};
use tenant::objects::{self, Kind, Stored};
use tenant::util::{now_secs, parse_rfc3339};
use tenant::{audit, signin_log, sync_reports};

/// Rows on one page of a list.
const PAGE: usize = 50;
/// Most rows one CSV download holds.
const CSV_MAX: usize = 100_000;

type Params = HashMap<String, String>;

fn param<'a>(p: &'a Params, key: &str) -> Option<&'a str> {
    p.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn page(admin: &Admin, section: &str, title: &str, body: Markup) -> Response {
    html(StatusCode::OK, view::page(Some(&admin.viewer), section, title, body))
}

/// A link to the same list with `key=value` replacing the paging key.
fn next_link(base: &str, p: &Params, key: &str, value: &str) -> String {
    let mut pairs: Vec<(String, String)> =
        p.iter().filter(|(k, v)| k.as_str() != key && !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort();
    pairs.push((key.to_string(), value.to_string()));
    let query: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{}={}", tenant::util::urlencode(k), tenant::util::urlencode(v))).collect();
    format!("{base}?{}", query.join("&"))
}

// ---- Overview ----

struct Overview {
    counts: Vec<(String, i64)>,
    quarantined: i64,
    reports: Vec<sync_reports::Received>,
    successes: Vec<(String, f64)>,
    reasons: Vec<(String, u64)>,
    per_hour: Vec<(i64, u64, u64)>,
}

pub(super) async fn overview(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    let since = now_secs() - 24 * 3600;
    let found = read(&state, move |conn| {
        let mut stmt = conn.prepare("SELECT type, count(*) FROM resources GROUP BY type ORDER BY type DESC")?;
        let counts = stmt
            .query_map(tenant::db::params![], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<tenant::db::Result<Vec<_>>>()?;
        let quarantined =
            conn.query_row("SELECT count(DISTINCT resource_id) FROM quarantine", tenant::db::params![], |r| r.get(0))?;
        Ok(Overview {
            counts,
            quarantined,
            reports: sync_reports::latest(conn)?,
            successes: sync_reports::last_success(conn)?,
            reasons: signin_log::reasons_since(conn, since)?,
            per_hour: signin_log::per_hour(conn, since)?,
        })
    })
    .await;
    let o = match found {
        Ok(o) => o,
        Err(r) => return r,
    };
    let agents = state.pta.agents_online().await;
    let now = now_secs();
    let stopped: Vec<&sync_reports::Received> = o.reports.iter().filter(|r| r.report.status == "stopped").collect();
    let body = html! {
        @for r in &stopped {
            p.alert role="alert" {
                "Synchronisation of " strong { (r.report.connector) } " is stopped: "
                (r.report.deletions_held) " deletions wait for approval. "
                a href=(format!("/admin/sync/{}", tenant::util::urlencode(&r.report.connector))) { "Review them" }
            }
        }
        h2 { "Directory" }
        div.cards {
            @for (kind, n) in &o.counts {
                div.card { span.n { (n) } (kind) "s" }
            }
            div.card { span.n { (o.quarantined) } "Quarantined objects" }
            div.card { span.n { (agents) } "PTA agents online" }
        }
        h2 { "Synchronisation" }
        @if o.reports.is_empty() {
            p { "No sync daemon has reported yet." }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Connector" } th scope="col" { "Last cycle" } th scope="col" { "Result" } th scope="col" { "Last success" } th scope="col" { "Errors" } } }
                tbody {
                    @for r in &o.reports {
                        @let success = o.successes.iter().find(|(c, _)| c == &r.report.connector).map(|(_, t)| *t as i64);
                        @let stale = success.is_none_or(|t| now - t > 3 * r.report.interval_secs.max(60) as i64);
                        tr {
                            td { a href=(format!("/admin/sync/{}", tenant::util::urlencode(&r.report.connector))) { (r.report.connector) } }
                            td { (when_text(&r.report.finished)) }
                            td { (status_text(&r.report.status)) }
                            td {
                                @match success {
                                    Some(t) => { span class=(if stale { "bad" } else { "ok" }) { (age(now - t)) " ago" } }
                                    None => { span.bad { "never" } }
                                }
                            }
                            td { (r.report.failed) }
                        }
                    }
                }
            } }
        }
        h2 { "Sign-ins in the last 24 hours" }
        @if o.reasons.is_empty() {
            p { "No sign-ins." }
        } @else {
            (sign_in_chart(&o.per_hour, since))
            div.scroll { table {
                thead { tr { th scope="col" { "Outcome" } th scope="col" { "Sign-ins" } } }
                tbody { @for (reason, n) in &o.reasons { tr { td { a href=(format!("/admin/sign-ins?outcome={}", tenant::util::urlencode(reason))) { (reason) } } td { (n) } } } }
            } }
        }
    };
    page(&admin, "/admin", "Overview", body)
}

fn status_text(status: &str) -> Markup {
    html! {
        @match status {
            "success" => span.ok { "Success" },
            "stopped" => span.warn { "Stopped: deletion threshold" },
            other => span.bad { (other) },
        }
    }
}

/// Sign-ins per hour since `since`, successes and failures stacked.
fn sign_in_chart(per_hour: &[(i64, u64, u64)], since: i64) -> Markup {
    let first = since / 3600 * 3600;
    let bars: Vec<(String, Vec<f64>)> = (0..25)
        .map(|i| first + i * 3600)
        .map(|hour| {
            let (ok, failed) =
                per_hour.iter().find(|(h, _, _)| *h == hour).map_or((0, 0), |(_, ok, failed)| (*ok, *failed));
            (when(hour).get(11..16).unwrap_or_default().to_string(), vec![ok as f64, failed as f64])
        })
        .collect();
    let total_ok: u64 = per_hour.iter().map(|(_, ok, _)| ok).sum();
    let total_failed: u64 = per_hour.iter().map(|(_, _, f)| f).sum();
    view::bar_chart(
        &format!("Sign-ins per hour over the last 24 hours: {total_ok} succeeded, {total_failed} failed"),
        &[("Succeeded", "s", "#1e8e3e"), ("Failed", "f", "#c5221f")],
        &bars,
        "per hour",
    )
}

// ---- Users and groups ----

/// Objects of `kind` whose name starts with `q` (user name, display name
/// or an e-mail address), after the key `after`, in name order.
fn search(conn: &Connection, kind: Kind, q: Option<&str>, after: &str) -> tenant::Result<Vec<Stored>> {
    // Users page by user name (its index; only users have one), groups by
    // (display name, id) (the index on type, display name and id), so a
    // page deep in the list reads only its own rows.
    let (order, after_sql) = match kind {
        Kind::User => ("user_name_lc", format!("{} = ?1 AND user_name_lc > ?2", conn.unindexed("type"))),
        _ => ("display_name_lc, id", "type = ?1 AND (display_name_lc, id) > (?2, ?3)".to_string()),
    };
    let (after_name, after_id) = after.split_once('\u{0}').unwrap_or((after, ""));
    let limit = i64::try_from(PAGE + 1).unwrap_or(51);
    let ids: Vec<String> = match q.map(str::to_lowercase) {
        None => {
            let sql = format!("SELECT id FROM resources WHERE {after_sql} ORDER BY {order} LIMIT ?4");
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_map(params![kind.as_str(), after_name, after_id, limit], |r| r.get(0))?
                .collect::<tenant::db::Result<_>>()?
        }
        Some(q) => {
            // Prefix ranges on the indexes: names and addresses from `q` up to `q` + the last character.
            let end = format!("{q}\u{10FFFF}");
            let sql = format!(
                "SELECT id FROM resources WHERE {after_sql} AND id IN (
                     SELECT id FROM resources WHERE user_name_lc >= ?5 AND user_name_lc < ?6
                     UNION SELECT id FROM resources WHERE display_name_lc >= ?5 AND display_name_lc < ?6
                     UNION SELECT resource_id FROM claims WHERE value >= ?5 AND value < ?6)
                 ORDER BY {order} LIMIT ?4"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_map(params![kind.as_str(), after_name, after_id, limit, q, end], |r| r.get(0))?
                .collect::<tenant::db::Result<_>>()?
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(o) = objects::load(conn, Some(kind), &id)? {
            out.push(o);
        }
    }
    Ok(out)
}

/// The paging key of an object in its list (see [`search`]).
fn key_of(o: &Stored) -> String {
    match o.kind {
        Kind::User => console::display_of(o).to_lowercase(),
        _ => format!(
            "{}\u{0}{}",
            o.data.get("displayName").and_then(Value::as_str).unwrap_or_default().to_lowercase(),
            o.id
        ),
    }
}

fn text_at<'v>(o: &'v Stored, key: &str) -> &'v str {
    o.data.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn mail_of(o: &Stored) -> String {
    o.data
        .get("emails")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find_map(|e| e.get("value").and_then(Value::as_str)))
        .unwrap_or_default()
        .to_string()
}

pub(super) async fn users(State(state): State<Arc<AppState>>, admin: Admin, Query(p): Query<Params>) -> Response {
    list(state, admin, p, Kind::User).await
}

pub(super) async fn groups(State(state): State<Arc<AppState>>, admin: Admin, Query(p): Query<Params>) -> Response {
    list(state, admin, p, Kind::Group).await
}

async fn list(state: Arc<AppState>, admin: Admin, p: Params, kind: Kind) -> Response {
    let q = param(&p, "q").map(str::to_string);
    let after = param(&p, "after").unwrap_or_default().to_string();
    let query = q.clone();
    let mut found = match read(&state, move |conn| search(conn, kind, query.as_deref(), &after)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let more = found.len() > PAGE;
    found.truncate(PAGE);
    let (section, title, base) = match kind {
        Kind::User => ("/admin/users", "Users", "/admin/users"),
        _ => ("/admin/groups", "Groups", "/admin/groups"),
    };
    let body = html! {
        form.filters method="get" action=(base) role="search" {
            div {
                label for="q" { "Name, user name or e-mail starts with" }
                input type="search" id="q" name="q" value=(q.as_deref().unwrap_or_default());
            }
            button type="submit" { "Search" }
        }
        @if found.is_empty() {
            p { "Nothing found." }
        } @else {
            div.scroll { table {
                thead { tr {
                    @if kind == Kind::User { th scope="col" { "User name" } th scope="col" { "Display name" } th scope="col" { "E-mail" } th scope="col" { "Enabled" } }
                    @else { th scope="col" { "Display name" } th scope="col" { "E-mail" } th scope="col" { "Synchronised" } }
                } }
                tbody {
                    @for o in &found {
                        tr {
                            @if kind == Kind::User {
                                td { a href=(format!("/admin/users/{}", o.id)) { (console::display_of(o)) } }
                                td { (text_at(o, "displayName")) }
                                td { (mail_of(o)) }
                                td { @if o.data.get("active") == Some(&Value::Bool(false)) { "no" } @else { "yes" } }
                            } @else {
                                td { a href=(format!("/admin/groups/{}", o.id)) { (console::display_of(o)) } }
                                td { (mail_of(o)) }
                                td { @if o.data.get("externalId").is_some() { "yes" } @else { "no" } }
                            }
                        }
                    }
                }
            } }
        }
        @if more && let Some(last) = found.last() {
            p.pager { a href=(next_link(base, &p, "after", &key_of(last))) rel="next" { "Next page" } }
        }
    };
    page(&admin, section, title, body)
}

struct UserDetail {
    user: Stored,
    groups: Vec<(String, String)>,
    quarantine: Vec<proto::hybrid::QuarantineEntry>,
    sign_ins: Vec<signin_log::Entry>,
    applications: Vec<(String, String)>,
    locked_until: Option<i64>,
    blocked: bool,
    has_password: bool,
    /// Its domain writes passwords back on-premises (a reset is possible).
    writes_back: bool,
    lineage: Option<tenant::lineage::Lineage>,
}

pub(super) async fn user(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    let found = read(&state, move |conn| {
        let Some(user) = objects::load(conn, Some(Kind::User), &id)? else { return Ok(None) };
        let name = console::display_of(&user);
        let sql = format!(
            "SELECT r.id, coalesce({}, r.id) FROM members m JOIN resources r ON r.num = m.group_num
             WHERE m.member_num = (SELECT num FROM resources WHERE id = ?1) ORDER BY 2 LIMIT 500",
            conn.json_text("r.data", "displayName")
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let groups =
            stmt.query_map(params![user.id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<tenant::db::Result<_>>()?;
        let quarantine = tenant::objects::quarantine_of(conn, &user.id)?;
        let filter = signin_log::Filter { user_name: Some(name.clone()), ..Default::default() };
        let has_password: Option<i64> = conn
            .query_row("SELECT 1 FROM credentials WHERE resource_id = ?1", params![user.id], |r| r.get(0))
            .optional()?;
        Ok(Some(UserDetail {
            groups,
            quarantine,
            sign_ins: signin_log::query(conn, &filter, 20)?,
            applications: signin_log::applications(conn)?,
            locked_until: console::locked_until(conn, &name)?,
            blocked: console::is_blocked(conn, &user.id)?,
            has_password: has_password.is_some(),
            writes_back: tenant::signin::writes_back(conn, &user)?,
            lineage: tenant::lineage::get(conn, &user.id)?,
            user,
        }))
    })
    .await;
    let d = match found {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(Some(&admin.viewer), "such user"),
        Err(r) => return r,
    };
    let u = &d.user;
    let v = &admin.viewer;
    let helpdesk = admin.may(Permission::Helpdesk);
    let administer = admin.may(Permission::Administer);
    let done = param(&p, "done");
    let body = html! {
        @if let Some(done) = done { p.notice role="status" { (done) } }
        h2 { "Account" }
        dl {
            dt { "User name" } dd { (console::display_of(u)) }
            dt { "Object id" } dd { (u.id) }
            dt { "immutableId (sourceAnchor)" } dd { (immutable_id(u).unwrap_or("— (cloud-only)")) }
            dt { "externalId" } dd { (text_at(u, "externalId")) }
            dt { "Enabled" } dd { @if u.data.get("active") == Some(&Value::Bool(false)) { "no (disabled in the directory)" } @else { "yes" } }
            dt { "Cloud sign-in" } dd { @if d.blocked { span.bad { "blocked" } } @else { "allowed" } }
            dt { "Lockout" } dd {
                @match d.locked_until {
                    Some(t) => span.bad { "locked until " (when(t)) },
                    None => "not locked",
                }
            }
            dt { "Password (hash sync)" } dd { @if d.has_password { "synchronised" } @else { "none in the cloud" } }
            dt { "Created" } dd { (when_text(&u.created)) }
            dt { "Last changed" } dd { (when_text(&u.modified)) }
        }
        @if helpdesk {
            h2 { "Actions" }
            div.actions {
                (action(v, helpdesk, &format!("/admin/users/{}/unlock", u.id), "Unlock", false))
                (action(v, helpdesk, &format!("/admin/users/{}/revoke", u.id), "Revoke sessions and refresh tokens", false))
                @if d.writes_back {
                    (action(v, helpdesk, &format!("/admin/users/{}/reset-password", u.id), "Reset password (on-premises too)", true))
                }
                @if d.blocked {
                    (action(v, administer, &format!("/admin/users/{}/unblock", u.id), "Allow cloud sign-in", false))
                } @else {
                    (action(v, administer, &format!("/admin/users/{}/block", u.id), "Block cloud sign-in", true))
                }
            }
        }
        @if !d.quarantine.is_empty() {
            h2 { "Quarantined values" }
            p { "These values are held by another object, so this object does not have them (duplicate attribute resiliency). The holder keeps a value; when it lets go, the value goes to the waiting object with the lowest immutableId." }
            div.scroll { table {
                thead { tr { th scope="col" { "Attribute" } th scope="col" { "Wanted value" } th scope="col" { "Held by" } th scope="col" { "Why" } th scope="col" { "Since" } } }
                tbody { @for e in &d.quarantine {
                    tr {
                        td { (e.attribute) } td { (e.value) }
                        td { a href=(format!("/admin/users/{}", e.holder.id)) { (e.holder.name) } }
                        td { (e.reason.explain()) } td { (when_text(&e.since)) }
                    }
                } }
            } }
        }
        h2 { "Attributes" }
        (attributes(&u.data))
        (lineage_section(v, &u.id, immutable_id(u).is_some(), d.lineage.as_ref()))
        h2 { "Groups" }
        @if d.groups.is_empty() { p { "Not a member of any group." } }
        @else { ul { @for (id, name) in &d.groups { li { a href=(format!("/admin/groups/{id}")) { (name) } } } } }
        h2 { "Recent sign-ins" }
        (sign_in_table(&d.sign_ins, &d.applications))
        p { a href=(format!("/admin/sign-ins?user={}", tenant::util::urlencode(&console::display_of(u)))) { "All sign-ins of this user" } }
        p { a href=(format!("/admin/audit?resource={}", u.id)) { "Audit entries of this user" } }
    };
    page(&admin, "/admin/users", &console::display_of(u), body)
}

fn immutable_id(o: &Stored) -> Option<&str> {
    o.data
        .as_object()
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.starts_with("urn:"))
        .find_map(|(_, ext)| ext.get("immutableId").and_then(Value::as_str))
}

/// An object's attributes as a definition list (nested values flattened to paths).
fn attributes(data: &Value) -> Markup {
    let mut rows = Vec::new();
    // Iterative: a stack of (path, value), so nesting depth never grows the call stack.
    let mut stack: Vec<(String, &Value)> = vec![(String::new(), data)];
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter().rev() {
                    let short = k.rsplit(':').next().unwrap_or(k);
                    stack.push((if path.is_empty() { short.to_string() } else { format!("{path}.{short}") }, v));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate().rev() {
                    stack.push((format!("{path}[{i}]"), v));
                }
            }
            Value::String(s) => rows.push((path, s.clone())),
            other => rows.push((path, other.to_string())),
        }
    }
    html! { dl { @for (k, v) in &rows { dt { (k) } dd { (v) } } } }
}

pub(super) async fn user_action(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, what)): Path<(String, String)>,
    Form(form): Form<Params>,
) -> Response {
    let permission = match what.as_str() {
        "reset-password" => return reset_password(state, headers, id, form).await,
        "unlock" | "revoke" => Permission::Helpdesk,
        "block" | "unblock" => Permission::Administer,
        _ => return not_found(None, "such action"),
    };
    let admin = match authorised(&state, &headers, &form, permission, &format!("user {what}")).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let actor = admin.actor();
    let user_id = id.clone();
    let done = change(&state, move |t| {
        Ok(match what.as_str() {
            "unlock" => format!("Unlocked ({} lockout counters cleared).", t.unlock_user(&actor, &user_id)?),
            "revoke" => format!("{} sessions and refresh tokens revoked.", t.revoke_user_sessions(&actor, &user_id)?),
            "block" => {
                t.set_user_blocked(&actor, &user_id, true)?;
                "Cloud sign-in blocked; the user's sessions ended.".to_string()
            }
            _ => {
                t.set_user_blocked(&actor, &user_id, false)?;
                "Cloud sign-in allowed again.".to_string()
            }
        })
    })
    .await;
    match done {
        Ok(text) => Redirect::to(&format!("/admin/users/{id}?done={}", tenant::util::urlencode(&text))).into_response(),
        Err(tenant::TenantError::NotFound(_)) => not_found(Some(&admin.viewer), "such user"),
        Err(e) => super::failed(&e.into()),
    }
}

/// A helpdesk reset: a random password set on-premises through an agent
/// (password writeback), then in the tenant; shown once on the answer page,
/// never in a URL or the audit.
async fn reset_password(state: Arc<AppState>, headers: HeaderMap, id: String, form: Params) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Helpdesk, "user reset-password").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let user_id = id.clone();
    let found = read(&state, move |conn| objects::load(conn, Some(Kind::User), &user_id)).await;
    let user = match found {
        Ok(Some(u)) => u,
        Ok(None) => return not_found(Some(&admin.viewer), "such user"),
        Err(r) => return r,
    };
    let name = console::display_of(&user);
    let password = tenant::writeback::random_password();
    let request = tenant::writeback::Request::Reset { actor: admin.actor(), enforce_policy: false };
    let written = crate::writeback::write_password(&state, &name, &password, request).await;
    match written {
        Ok(Ok(done)) => {
            let body = html! {
                p.notice role="status" { "The password of " (name) " was set on-premises and in the cloud." }
                dl {
                    dt { "New password" } dd { code { (password) } }
                }
                p { "It is shown this once. Give it to the user over a channel you trust; their other sessions have ended."
                    @if !done.record_replaced { " They sign in with it through pass-through authentication." } }
                p { a href=(format!("/admin/users/{id}")) { "Back to the user" } }
            };
            let mut response = page(&admin, "users", &format!("Password reset: {name}"), body);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(Err(refused)) => {
            let text = format!("The password was not reset: {refused}");
            Redirect::to(&format!("/admin/users/{id}?done={}", tenant::util::urlencode(&text))).into_response()
        }
        Err(e) => super::failed(&e.into()),
    }
}

pub(super) async fn group(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    // Members are paged in the order of their keys (`resources.num`), which
    // the members table is kept in: a page reads only its own rows.
    let after: i64 = param(&p, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let found = read(&state, move |conn| {
        let Some(group) = objects::load(conn, Some(Kind::Group), &id)? else { return Ok(None) };
        let total: i64 = conn.query_row(
            "SELECT count(*) FROM members WHERE group_num = (SELECT num FROM resources WHERE id = ?1)",
            params![group.id],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare_cached(
            "SELECT m.member_num, r.id FROM members m JOIN resources r ON r.num = m.member_num
             WHERE m.group_num = (SELECT num FROM resources WHERE id = ?1) AND m.member_num > ?2
             ORDER BY m.member_num LIMIT ?3",
        )?;
        let keys: Vec<(i64, String)> = stmt
            .query_map(params![group.id, after, i64::try_from(PAGE + 1).unwrap_or(51)], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<tenant::db::Result<_>>()?;
        let mut members = Vec::with_capacity(keys.len());
        for (num, id) in keys {
            let o = objects::load(conn, None, &id)?;
            members.push((num, id, o));
        }
        let lineage = tenant::lineage::get(conn, &group.id)?;
        Ok(Some((group, total, members, lineage)))
    })
    .await;
    let (g, total, mut members, lineage) = match found {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(Some(&admin.viewer), "such group"),
        Err(r) => return r,
    };
    let more = members.len() > PAGE;
    members.truncate(PAGE);
    let base = format!("/admin/groups/{}", g.id);
    let body = html! {
        @if let Some(done) = param(&p, "done") { p.notice role="status" { (done) } }
        dl {
            dt { "Display name" } dd { (text_at(&g, "displayName")) }
            dt { "Object id" } dd { (g.id) }
            dt { "immutableId (sourceAnchor)" } dd { (immutable_id(&g).unwrap_or("— (cloud-only)")) }
            dt { "Members" } dd { (total) }
        }
        h2 { "Members" }
        @if members.is_empty() { p { "No members." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Member" } th scope="col" { "Type" } } }
                tbody { @for (_, id, o) in &members { tr {
                    @match o {
                        Some(o) => {
                            td { a href=(format!("/admin/{}/{}", if o.kind == Kind::Group { "groups" } else { "users" }, o.id)) { (console::display_of(o)) } }
                            td { (o.kind.as_str()) }
                        }
                        None => { td { (id) } td { "(gone)" } }
                    }
                } } }
            } }
        }
        @if more && let Some((last, _, _)) = members.last() {
            p.pager { a href=(next_link(&base, &p, "after", &last.to_string())) rel="next" { "Next page" } }
        }
        h2 { "Attributes" }
        (attributes(&g.data))
        (lineage_section(&admin.viewer, &g.id, immutable_id(&g).is_some(), lineage.as_ref()))
    };
    page(&admin, "/admin/groups", &console::display_of(&g), body)
}

/// Where the object's values come from, as the sync daemon explained it,
/// and the button that asks it (again).
fn lineage_section(v: &Viewer, id: &str, synchronised: bool, lineage: Option<&tenant::lineage::Lineage>) -> Markup {
    html! {
        @if synchronised {
            h2 { "Where the values come from" }
            @match lineage {
                Some(l) if l.found => {
                    p {
                        "On-premises object " strong { (l.source_object) } " (source " (l.source) ")"
                        @for j in &l.joined { ", joined with " (j) }
                        ", as the sync daemon explained it " (when_text(l.answered.as_deref().unwrap_or_default())) "."
                    }
                    div.scroll { table {
                        thead { tr { th scope="col" { "Attribute" } th scope="col" { "Outbound flow" } th scope="col" { "From on-premises" } } }
                        tbody { @for a in &l.attributes { tr { td { (a.attribute) } td { (a.outbound) } td { (a.inbound.as_deref().unwrap_or("—")) } } } }
                    } }
                }
                Some(l) if l.answered.is_some() && !l.waiting() => {
                    p { "No sync daemon knows this object any more (it may have left the synchronisation scope)." }
                }
                _ => {}
            }
            @if lineage.is_some_and(tenant::lineage::Lineage::waiting) {
                p.notice role="status" { "Asked the sync daemon; it answers with its next cycle. Reload this page then." }
            } @else {
                form method="post" action=(format!("/admin/lineage/{id}")) {
                    (csrf_field(v))
                    button type="submit" { @if lineage.is_some() { "Ask the sync daemon again" } @else { "Ask the sync daemon which rules and on-premises values these come from" } }
                }
            }
        }
    }
}

/// POST /admin/lineage/{id}: asks the sync daemons about an object.
pub(super) async fn request_lineage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Read, "lineage").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let actor = admin.actor();
    let object = id.clone();
    let kind = read(&state, move |conn| Ok(objects::load(conn, None, &object)?.map(|o| o.kind))).await;
    let page = match kind {
        Ok(Some(Kind::Group)) => "groups",
        Ok(Some(_)) => "users",
        Ok(None) => return not_found(Some(&admin.viewer), "such object"),
        Err(r) => return r,
    };
    let object = id.clone();
    match change(&state, move |t| t.request_lineage(&actor, &object)).await {
        Ok(()) => Redirect::to(&format!(
            "/admin/{page}/{id}?done={}",
            tenant::util::urlencode("Asked the sync daemon; it answers with its next cycle.")
        ))
        .into_response(),
        Err(tenant::TenantError::Invalid(why)) => {
            message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Not asked", &why)
        }
        Err(e) => super::failed(&e.into()),
    }
}

// ---- Synchronisation ----

pub(super) async fn sync(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    let found = read(&state, |conn| Ok((sync_reports::latest(conn)?, sync_reports::last_success(conn)?))).await;
    let (reports, successes) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = now_secs();
    let body = html! {
        @if reports.is_empty() {
            p { "No sync daemon has reported yet. A daemon reports each cycle to the tenant it exports to." }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Connector" } th scope="col" { "Host" } th scope="col" { "Last cycle" } th scope="col" { "Result" } th scope="col" { "Last success" } th scope="col" { "Staging" } } }
                tbody { @for r in &reports {
                    @let success = successes.iter().find(|(c, _)| c == &r.report.connector).map(|(_, t)| *t as i64);
                    tr {
                        td { a href=(format!("/admin/sync/{}", tenant::util::urlencode(&r.report.connector))) { (r.report.connector) } }
                        td { (r.report.host) " (" (r.report.version) ")" }
                        td { (when_text(&r.report.finished)) }
                        td { (status_text(&r.report.status)) }
                        td { @match success { Some(t) => { (age(now - t)) " ago" } None => span.bad { "never" } } }
                        td { @if r.report.staging { "yes" } @else { "no" } }
                    }
                } }
            } }
        }
    };
    page(&admin, "/admin/sync", "Synchronisation", body)
}

pub(super) async fn connector(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Path(name): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    let connector = name.clone();
    let found = read(&state, move |conn| {
        Ok((sync_reports::history(conn, &connector, 50)?, console::deletion_allowance(conn, &connector)?))
    })
    .await;
    let (history, allowance) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(latest) = history.first() else { return not_found(Some(&admin.viewer), "connector with that name") };
    let r = &latest.report;
    let bars: Vec<(String, Vec<f64>)> = history
        .iter()
        .rev()
        .map(|h| {
            let label = when_text(&h.report.finished).get(11..16).unwrap_or_default().to_string();
            (label, h.report.stage_ms.iter().map(|ms| *ms as f64 / 1000.0).collect())
        })
        .collect();
    let v = &admin.viewer;
    let body = html! {
        @if let Some(done) = param(&p, "done") { p.notice role="status" { (done) } }
        dl {
            dt { "Last cycle" } dd { (when_text(&r.finished)) " on " (r.host) }
            dt { "Result" } dd { (status_text(&r.status)) @if let Some(e) = &r.error { " — " (e) } }
            dt { "Stages" } dd { "import " (seconds(r.stage_ms[0])) ", sync " (seconds(r.stage_ms[1])) ", export " (seconds(r.stage_ms[2])) }
            dt { "Counts" } dd { (r.imported) " imported, " (r.created) " created, " (r.updated) " updated, " (r.deleted) " deleted, " (r.failed) " failed, " (r.passwords) " passwords" }
        }
        @if r.status == "stopped" {
            h2 { "Deletions waiting for approval" }
            p.alert {
                "The last cycle would delete " strong { (r.deletions_held) } " cloud objects, more than the deletion threshold allows, so it exported nothing. "
                "Check that these objects really were deleted or moved out of scope on-premises."
            }
            @if allowance.is_some() {
                p.notice role="status" { "Allowed: the next cycle deletes up to " (allowance.unwrap_or_default()) " objects." }
            }
            div.scroll { table {
                thead { tr { th scope="col" { "Object" } th scope="col" { "Type" } th scope="col" { "Cloud id" } } }
                tbody { @for d in &r.held_deletions { tr {
                    td { (d.object) } td { (d.kind) }
                    td { a href=(format!("/admin/{}/{}", if d.kind == "Group" { "groups" } else { "users" }, d.cloud_id)) { (d.cloud_id) } }
                } } }
            } }
            @if (r.held_deletions.len() as u64) < r.deletions_held {
                p { "The first " (r.held_deletions.len()) " of " (r.deletions_held) " are listed." }
            }
            @if admin.may(Permission::Administer) && allowance.is_none() {
                form method="post" action=(format!("/admin/sync/{}/allow-deletions", tenant::util::urlencode(&r.connector))) {
                    (csrf_field(v))
                    input type="hidden" name="count" value=(r.deletions_held);
                    button.danger type="submit" { "Allow these " (r.deletions_held) " deletions" }
                }
            }
        }
        @if !r.errors.is_empty() {
            h2 { "Objects that failed in the last cycle" }
            div.scroll { table {
                thead { tr { th scope="col" { "Object" } th scope="col" { "Reason" } } }
                tbody { @for e in &r.errors { tr { td { (e.object) } td { (e.message) } } } }
            } }
        }
        h2 { "Cycle duration" }
        (view::bar_chart(
            &format!("Duration of the last {} cycles, by stage", history.len()),
            &[("Import", "i", "#1a73e8"), ("Sync", "y", "#f9ab00"), ("Export", "e", "#9334e6")],
            &bars,
            "s",
        ))
        h2 { "Run history" }
        div.scroll { table {
            thead { tr {
                th scope="col" { "Finished" } th scope="col" { "Result" } th scope="col" { "Import" } th scope="col" { "Sync" } th scope="col" { "Export" }
                th scope="col" { "Imported" } th scope="col" { "Created" } th scope="col" { "Updated" } th scope="col" { "Deleted" } th scope="col" { "Failed" }
            } }
            tbody { @for h in &history { @let x = &h.report; tr {
                td { (when_text(&x.finished)) } td { (status_text(&x.status)) }
                td { (seconds(x.stage_ms[0])) } td { (seconds(x.stage_ms[1])) } td { (seconds(x.stage_ms[2])) }
                td { (x.imported) } td { (x.created) } td { (x.updated) } td { (x.deleted) } td { (x.failed) }
            } } }
        } }
    };
    page(&admin, "/admin/sync", &format!("Connector {name}"), body)
}

pub(super) async fn allow_deletions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Administer, "allow deletions").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(count) = form.get("count").and_then(|c| c.trim().parse::<u64>().ok()) else {
        return message(
            StatusCode::BAD_REQUEST,
            Some(&admin.viewer),
            "Not allowed",
            "The number of deletions is missing.",
        );
    };
    // Only what the connector's latest report holds back can be allowed.
    let connector = name.clone();
    let held = read(&state, move |conn| {
        Ok(sync_reports::history(conn, &connector, 1)?
            .into_iter()
            .next()
            .map(|r| (r.report.status, r.report.deletions_held)))
    })
    .await;
    match held {
        Ok(Some((status, held))) if status == "stopped" && held == count => {}
        Ok(Some(_)) => {
            return message(
                StatusCode::CONFLICT,
                Some(&admin.viewer),
                "Nothing to allow",
                "The connector is not waiting for these deletions any more (a newer cycle reported). Review the page again.",
            );
        }
        Ok(None) => return not_found(Some(&admin.viewer), "connector with that name"),
        Err(r) => return r,
    }
    let actor = admin.actor();
    let connector = name.clone();
    match change(&state, move |t| t.allow_deletions(&actor, &connector, count)).await {
        Ok(()) => Redirect::to(&format!(
            "/admin/sync/{}?done={}",
            tenant::util::urlencode(&name),
            tenant::util::urlencode(&format!("Allowed: the next cycle deletes up to {count} objects."))
        ))
        .into_response(),
        Err(e) => super::failed(&e.into()),
    }
}

// ---- Logs ----

/// `applications`: (value in the log, name), see [`signin_log::applications`].
fn sign_in_table(entries: &[signin_log::Entry], applications: &[(String, String)]) -> Markup {
    let name_of = |e: &signin_log::Entry| -> String {
        let value = e.application.as_deref().unwrap_or_default();
        applications.iter().find(|(v, _)| v == value).map_or_else(|| value.to_string(), |(_, n)| n.clone())
    };
    html! {
        @if entries.is_empty() { p { "No sign-ins." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Time" } th scope="col" { "User" } th scope="col" { "Method" } th scope="col" { "Outcome" } th scope="col" { "Application" } th scope="col" { "Address" } } }
                tbody { @for e in entries { tr {
                    td { (when(e.at)) } td { (e.user_name) } td { (e.method) }
                    td { @if e.success { span.ok { "success" } } @else { span.bad { (e.reason) } } }
                    td { (name_of(e)) } td { (e.address.as_deref().unwrap_or_default()) }
                } } }
            } }
        }
    }
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM` (a date input, a datetime-local
/// input; UTC) → epoch seconds.
fn parse_time(text: &str) -> Option<i64> {
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        16 => format!("{text}:00Z"),
        _ => text.to_string(),
    };
    parse_rfc3339(&full)
}

fn csv_response(name: &str, body: String) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

fn time_filters(p: &Params) -> Markup {
    html! {
        div { label for="from" { "From (UTC)" } input type="datetime-local" id="from" name="from" value=(param(p, "from").unwrap_or_default()); }
        div { label for="to" { "To (UTC)" } input type="datetime-local" id="to" name="to" value=(param(p, "to").unwrap_or_default()); }
    }
}

pub(super) async fn sign_ins(State(state): State<Arc<AppState>>, admin: Admin, Query(p): Query<Params>) -> Response {
    let csv = param(&p, "format") == Some("csv");
    let filter = signin_log::Filter {
        user_name: param(&p, "user").map(str::to_string),
        outcome: param(&p, "outcome").map(str::to_string),
        application: param(&p, "application").map(str::to_string),
        from: param(&p, "from").and_then(parse_time),
        to: param(&p, "to").and_then(parse_time),
        before: if csv { None } else { param(&p, "before").and_then(|b| b.parse().ok()) },
    };
    let limit = if csv { CSV_MAX } else { PAGE + 1 };
    let found =
        read(&state, move |conn| Ok((signin_log::query(conn, &filter, limit)?, signin_log::applications(conn)?))).await;
    let (mut entries, clients) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    if csv {
        let mut out = view::csv_row(&["time", "user", "method", "success", "reason", "application", "address"]);
        for e in &entries {
            out.push_str(&view::csv_row(&[
                &when(e.at),
                &e.user_name,
                &e.method,
                if e.success { "true" } else { "false" },
                &e.reason,
                e.application.as_deref().unwrap_or_default(),
                e.address.as_deref().unwrap_or_default(),
            ]));
        }
        return csv_response("sign-ins.csv", out);
    }
    let more = entries.len() > PAGE;
    entries.truncate(PAGE);
    let outcome = param(&p, "outcome").unwrap_or_default();
    let application = param(&p, "application").unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/admin/sign-ins" {
            div { label for="user" { "User name" } input type="text" id="user" name="user" value=(param(&p, "user").unwrap_or_default()); }
            div { label for="outcome" { "Outcome or reason" }
                select id="outcome" name="outcome" {
                    @for (value, label) in [("", "Any"), ("success", "Success"), ("failure", "Any failure"), ("wrong-password", "Wrong password"), ("locked-out", "Locked out"), ("disabled", "Disabled"), ("blocked", "Blocked"), ("pta-no-agent", "No PTA agent")] {
                        option value=(value) selected[outcome == value] { (label) }
                    }
                }
            }
            div { label for="application" { "Application" }
                select id="application" name="application" {
                    option value="" { "Any" }
                    @for (value, name) in &clients { option value=(value) selected[application == value] { (name) } }
                }
            }
            (time_filters(&p))
            button type="submit" { "Show" }
        }
        p { a href=(next_link("/admin/sign-ins", &p, "format", "csv")) download { "Download as CSV" } " (at most " (CSV_MAX) " rows)" }
        (sign_in_table(&entries, &clients))
        @if more && let Some(last) = entries.last() {
            p.pager { a href=(next_link("/admin/sign-ins", &p, "before", &last.seq.to_string())) rel="next" { "Older" } }
        }
    };
    page(&admin, "/admin/sign-ins", "Sign-in log", body)
}

pub(super) async fn audit(State(state): State<Arc<AppState>>, admin: Admin, Query(p): Query<Params>) -> Response {
    let csv = param(&p, "format") == Some("csv");
    let stamp = |key: &str| param(&p, key).and_then(parse_time).map(|t| tenant::util::rfc3339(t, 0));
    let filter = audit::Filter {
        actor: param(&p, "actor").map(str::to_string),
        action: param(&p, "action").map(str::to_string),
        resource_id: param(&p, "resource").map(str::to_string),
        from: stamp("from"),
        to: stamp("to"),
        before: if csv { None } else { param(&p, "before").and_then(|b| b.parse().ok()) },
    };
    let limit = if csv { CSV_MAX } else { PAGE + 1 };
    let mut entries = match read(&state, move |conn| audit::query(conn, &filter, limit)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let detail = |e: &audit::AuditEntry| e.detail.as_ref().map(Value::to_string).unwrap_or_default();
    if csv {
        let mut out = view::csv_row(&["time", "actor", "action", "type", "object", "detail"]);
        for e in &entries {
            out.push_str(&view::csv_row(&[
                &e.at,
                &e.actor,
                &e.action,
                e.resource_type.as_deref().unwrap_or_default(),
                e.resource_id.as_deref().unwrap_or_default(),
                &detail(e),
            ]));
        }
        return csv_response("audit.csv", out);
    }
    let more = entries.len() > PAGE;
    entries.truncate(PAGE);
    let body = html! {
        form.filters method="get" action="/admin/audit" {
            div { label for="actor" { "Actor" } input type="text" id="actor" name="actor" value=(param(&p, "actor").unwrap_or_default()); }
            div { label for="action" { "Action" } input type="text" id="action" name="action" value=(param(&p, "action").unwrap_or_default()); }
            div { label for="resource" { "Object id or name" } input type="text" id="resource" name="resource" value=(param(&p, "resource").unwrap_or_default()); }
            (time_filters(&p))
            button type="submit" { "Show" }
        }
        p { a href=(next_link("/admin/audit", &p, "format", "csv")) download { "Download as CSV" } " (at most " (CSV_MAX) " rows)" }
        @if entries.is_empty() { p { "No entries." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Object" } th scope="col" { "Detail" } } }
                tbody { @for e in &entries { tr {
                    td { (when_text(&e.at)) } td { (e.actor) } td { (e.action) }
                    td { (e.resource_type.as_deref().unwrap_or_default()) " " (e.resource_id.as_deref().unwrap_or_default()) }
                    td { (detail(e)) }
                } } }
            } }
        }
        @if more && let Some(last) = entries.last() {
            p.pager { a href=(next_link("/admin/audit", &p, "before", &last.seq.to_string())) rel="next" { "Older" } }
        }
    };
    page(&admin, "/admin/audit", "Audit log", body)
}

// ---- Domains, applications, agents, branding, roles ----

pub(super) async fn domains(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    let found = read(&state, |conn| {
        let mut out = Vec::new();
        for d in tenant::domains::list(conn)? {
            let federation = tenant::federation::load(conn, &d.name)?;
            out.push((d, federation));
        }
        Ok(out)
    })
    .await;
    let list = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    let body = html! {
        div.scroll { table {
            thead { tr { th scope="col" { "Domain" } th scope="col" { "Sign-in" } th scope="col" { "Identity provider" } th scope="col" { "Verified" } th scope="col" { "Added" } } }
            tbody { @for (d, f) in &list { tr {
                td { (d.name) @if d.initial { " (initial)" } }
                td { (d.auth.as_str()) }
                td { @match f {
                    Some(tenant::federation::Federation::Oidc(o)) => { "OpenID Connect: " (o.issuer) }
                    Some(tenant::federation::Federation::Saml(s)) => { "SAML 2.0: " (s.entity_id) }
                    None => "—",
                } }
                td { "yes" }
                td { (when_text(&d.added)) }
            } } }
        } }
        p { "Domains are added and federated on the tenant's host: " code { "idbridge tenant domain add|federate" } "." }
    };
    page(&admin, "/admin/domains", "Domains", body)
}

pub(super) async fn applications(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    applications_page(&state, &admin, None).await
}

async fn applications_page(state: &Arc<AppState>, admin: &Admin, shown: Option<(String, String)>) -> Response {
    let found = read(state, |conn| {
        Ok((
            tenant::oidc::clients::list(conn)?,
            tenant::store::get_meta(conn, "console_client_id")?,
            tenant::saml_idp::apps(conn)?,
        ))
    })
    .await;
    let (clients, console_id, saml_apps) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    let v = &admin.viewer;
    let administer = admin.may(Permission::Administer);
    let body = html! {
        @if let Some((name, secret)) = &shown {
            div.notice role="status" {
                p { "The secret of " strong { (name) } " — shown only now; copy it into the application's settings:" }
                code.secret { (secret) }
            }
        }
        div.scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Client id" } th scope="col" { "Type" } th scope="col" { "Redirect URIs" } @if administer { th scope="col" { "Actions" } } } }
            tbody { @for c in &clients { tr {
                td { (c.name) } td { (c.id) } td { @if c.public { "public (PKCE)" } @else { "confidential" } }
                td { @for u in &c.redirect_uris { (u) br; } }
                @if administer { td { div.actions {
                    @if !c.public { (action(v, true, &format!("/admin/applications/{}/rotate", c.id), "New secret", false)) }
                    @if console_id.as_deref() != Some(c.id.as_str()) { (action(v, true, &format!("/admin/applications/{}/remove", c.id), "Remove", true)) }
                } } }
            } } }
        } }
        h2 { "SAML applications" }
        @if saml_apps.is_empty() {
            p { "None. " code { "idbridge tenant app add" } " registers one." }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Entity id" } th scope="col" { "ACS URLs" } th scope="col" { "NameID" } th scope="col" { "Who may use it" } th scope="col" { "Metadata" } } }
                tbody { @for a in &saml_apps { tr {
                    td { (a.name) } td { (a.entity_id) } td { @for u in &a.acs_urls { (u) br; } } td { (a.name_id_format.word()) }
                    td { @if a.allowed_groups.is_empty() { "everyone" } @else { (a.allowed_groups.join(", ")) } }
                    td { a href=(format!("/saml/{}/metadata", tenant::util::urlencode(&a.id))) { "metadata" } }
                } } }
            } }
        }
        @if administer {
            h2 { "Add an application" }
            form method="post" action="/admin/applications" {
                (csrf_field(v))
                label for="name" { "Name" }
                input type="text" id="name" name="name" required;
                label for="redirect_uris" { "Redirect URIs (one per line)" }
                textarea id="redirect_uris" name="redirect_uris" rows="3" cols="60" required {}
                p { label { input type="checkbox" name="public" value="yes"; " Public client (no secret; PKCE)" } }
                button type="submit" { "Add" }
            }
        }
    };
    page(admin, "/admin/applications", "Applications", body)
}

pub(super) async fn add_application(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Administer, "add application").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let name = form.get("name").map(|n| n.trim().to_string()).unwrap_or_default();
    let uris: Vec<String> = form
        .get("redirect_uris")
        .map(|u| u.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let public = form.contains_key("public");
    let actor = admin.actor();
    let added =
        change(&state, move |t| t.add_client(&actor, &name, &uris, public, tenant::oidc::keys::Alg::Rs256, &[])).await;
    match added {
        Ok((client, Some(secret))) => applications_page(&state, &admin, Some((client.name, secret))).await,
        Ok((_, None)) => Redirect::to("/admin/applications").into_response(),
        Err(tenant::TenantError::Invalid(why)) => {
            message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Application not added", &why)
        }
        Err(e) => super::failed(&e.into()),
    }
}

pub(super) async fn application_action(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, what)): Path<(String, String)>,
    Form(form): Form<Params>,
) -> Response {
    if what != "rotate" && what != "remove" {
        return not_found(None, "such action");
    }
    let admin = match authorised(&state, &headers, &form, Permission::Administer, &format!("application {what}")).await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let actor = admin.actor();
    let client_id = id.clone();
    let result = change(&state, move |t| {
        if what == "rotate" {
            let name = t.clients()?.into_iter().find(|c| c.id == client_id).map(|c| c.name).unwrap_or_default();
            return Ok(Some((name, t.rotate_client_secret(&actor, &client_id)?)));
        }
        t.remove_client(&actor, &client_id)?;
        Ok(None)
    })
    .await;
    match result {
        Ok(Some(shown)) => applications_page(&state, &admin, Some(shown)).await,
        Ok(None) => Redirect::to("/admin/applications").into_response(),
        Err(tenant::TenantError::NotFound(_)) => not_found(Some(&admin.viewer), "such application"),
        Err(tenant::TenantError::Invalid(why)) => {
            message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Not done", &why)
        }
        Err(e) => super::failed(&e.into()),
    }
}

pub(super) async fn agents(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    let list = match read(&state, tenant::pta::list_agents).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let online = state.pta.agents_online().await;
    let now = now_secs();
    let v = &admin.viewer;
    let administer = admin.may(Permission::Administer);
    let body = html! {
        p { (online) " agent(s) online now." }
        @if list.is_empty() { p { "No pass-through agent is registered (idbridge pta-agent register)." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Version" } th scope="col" { "Last seen" } th scope="col" { "Registered" } th scope="col" { "State" } @if administer { th scope="col" { "Actions" } } } }
                tbody { @for a in &list { tr {
                    td { (a.name) } td { (a.version.as_deref().unwrap_or("—")) }
                    td { @match a.last_seen { Some(t) => { (age(now - t)) " ago" } None => "never" } }
                    td { (when_text(&a.created)) }
                    td { @if let Some(r) = &a.revoked { span.bad { "revoked " (when_text(r)) } } @else { "active" } }
                    @if administer { td { @if a.revoked.is_none() { (action(v, true, &format!("/admin/agents/{}/revoke", a.id), "Revoke", true)) } } }
                } } }
            } }
        }
    };
    page(&admin, "/admin/agents", "Pass-through agents", body)
}

pub(super) async fn revoke_agent(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Administer, "revoke agent").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let actor = admin.actor();
    let agent = id.clone();
    match change(&state, move |t| t.revoke_pta_agent(&actor, &agent)).await {
        Ok(()) => {
            state.pta.forget(&id).await;
            Redirect::to("/admin/agents").into_response()
        }
        Err(tenant::TenantError::NotFound(_)) => not_found(Some(&admin.viewer), "such agent"),
        Err(e) => super::failed(&e.into()),
    }
}

fn branding_form(v: &Viewer, b: &tenant::branding::Branding, administer: bool) -> Markup {
    let field = |id: &str, label: &str, value: &str, kind: &str| {
        html! { label for=(id) { (label) } input type=(kind) id=(id) name=(id) value=(value) disabled[!administer]; }
    };
    html! {
        form method="post" action="/admin/branding" {
            (csrf_field(v))
            (field("name", "Name shown on the sign-in pages", &b.name, "text"))
            (field("color", "Accent colour (#rrggbb)", &b.color, "text"))
            (field("background_color", "Background colour (#rrggbb)", &b.background_color, "text"))
            (field("logo_url", "Logo URL (https:// or a path on the tenant)", b.logo_url.as_deref().unwrap_or_default(), "url"))
            (field("background_url", "Background image URL", b.background_url.as_deref().unwrap_or_default(), "url"))
            (field("text", "Text under the form", b.text.as_deref().unwrap_or_default(), "text"))
            div.actions {
                button type="submit" formmethod="get" formaction="/admin/branding/preview" formtarget="_blank" { "Preview" }
                @if administer { button type="submit" { "Save" } }
            }
        }
    }
}

pub(super) async fn branding(State(state): State<Arc<AppState>>, admin: Admin) -> Response {
    let b = match read(&state, |conn| Ok(tenant::branding::Branding::load(conn))).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = html! {
        p { "How the sign-in pages look. Preview shows the first sign-in page with these values before anything is saved." }
        (branding_form(&admin.viewer, &b, admin.may(Permission::Administer)))
    };
    page(&admin, "/admin/branding", "Branding", body)
}

fn branding_update(form: &Params) -> tenant::BrandingUpdate {
    let get = |k: &str| form.get(k).map(|v| v.trim().to_string());
    tenant::BrandingUpdate {
        name: get("name").filter(|n| !n.is_empty()),
        color: get("color").filter(|c| !c.is_empty()),
        background_color: get("background_color").filter(|c| !c.is_empty()),
        logo_url: get("logo_url"),
        background_url: get("background_url"),
        text: get("text"),
    }
}

/// GET /admin/branding/preview: the real first sign-in page, drawn with
/// the form's values (checked like a save; nothing is stored).
pub(super) async fn preview_branding(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    Query(p): Query<Params>,
) -> Response {
    let current = match read(&state, |conn| Ok(tenant::branding::Branding::load(conn))).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let u = branding_update(&p);
    let ok_colour = |c: &Option<String>| c.as_deref().is_none_or(tenant::branding::is_css_colour);
    let ok_url = |c: &Option<String>| c.as_deref().is_none_or(|u| u.is_empty() || tenant::branding::is_image_url(u));
    if !ok_colour(&u.color) || !ok_colour(&u.background_color) || !ok_url(&u.logo_url) || !ok_url(&u.background_url) {
        return message(
            StatusCode::BAD_REQUEST,
            Some(&admin.viewer),
            "No preview",
            "Colours are #rgb or #rrggbb; image URLs are https:// or a path on the tenant.",
        );
    }
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let b = tenant::branding::Branding {
        name: u.name.unwrap_or(current.name),
        color: u.color.unwrap_or(current.color),
        background_color: u.background_color.unwrap_or(current.background_color),
        logo_url: non_empty(u.logo_url),
        background_url: non_empty(u.background_url),
        text: non_empty(u.text),
    };
    // The sign-in page's own headers (its inline style), and never framed.
    crate::oidc::flow::html_response(StatusCode::OK, crate::oidc::pages::username_page(&b, &[], "", None, false))
}

pub(super) async fn save_branding(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    let admin = match authorised(&state, &headers, &form, Permission::Administer, "branding").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let update = branding_update(&form);
    let actor = admin.actor();
    match change(&state, move |t| t.set_branding(&actor, &update)).await {
        Ok(b) => {
            let body = html! {
                p.notice role="status" { "Saved." }
                (branding_form(&admin.viewer, &b, true))
            };
            page(&admin, "/admin/branding", "Branding", body)
        }
        Err(tenant::TenantError::Invalid(why)) => {
            message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Not saved", &why)
        }
        Err(e) => super::failed(&e.into()),
    }
}

pub(super) async fn roles(State(state): State<Arc<AppState>>, admin: Admin, Query(p): Query<Params>) -> Response {
    let list = match read(&state, console::list).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let v = &admin.viewer;
    let administer = admin.may(Permission::Administer);
    let body = html! {
        @if let Some(done) = param(&p, "done") { p.notice role="status" { (done) } }
        p { "global-admin: everything. helpdesk: reads users and groups, unlocks, revokes sessions. reader: reads everything, changes nothing." }
        div.scroll { table {
            thead { tr { th scope="col" { "Role" } th scope="col" { "Assigned to" } th scope="col" { "Since" } @if administer { th scope="col" { "Actions" } } } }
            tbody { @for a in &list { tr {
                td { (a.role.as_str()) }
                td { (a.principal.kind.as_str()) ": " (a.principal.name) }
                td { (when_text(&a.assigned)) }
                @if administer { td {
                    form method="post" action="/admin/roles/remove" {
                        (csrf_field(v))
                        input type="hidden" name="kind" value=(a.principal.kind.as_str());
                        input type="hidden" name="who" value=(a.principal.id);
                        input type="hidden" name="role" value=(a.role.as_str());
                        button.danger type="submit" { "Remove" }
                    }
                } }
            } } }
        } }
        @if administer {
            h2 { "Assign a role" }
            form method="post" action="/admin/roles" {
                (csrf_field(v))
                label for="kind" { "To a" }
                select id="kind" name="kind" { option value="User" { "User (user name)" } option value="Group" { "Group (name or id)" } }
                label for="who" { "Who" }
                input type="text" id="who" name="who" required;
                label for="role" { "Role" }
                select id="role" name="role" { @for r in Role::ALL { option value=(r.as_str()) { (r.as_str()) } } }
                button type="submit" { "Assign" }
            }
        }
    };
    page(&admin, "/admin/roles", "Roles", body)
}

/// The role form's fields: (kind, who, role), or what is wrong with them.
fn role_form(form: &Params) -> Result<(Kind, String, Role), String> {
    let kind = match form.get("kind").map(String::as_str) {
        Some("User") => Kind::User,
        Some("Group") => Kind::Group,
        _ => return Err("Choose a user or a group.".into()),
    };
    let who = form.get("who").map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).ok_or("Say who.")?;
    let role = Role::parse(form.get("role").map(String::as_str).unwrap_or_default()).map_err(|e| e.to_string())?;
    Ok((kind, who, role))
}

pub(super) async fn assign_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    role_change(state, headers, form, true).await
}

pub(super) async fn remove_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<Params>,
) -> Response {
    role_change(state, headers, form, false).await
}

async fn role_change(state: Arc<AppState>, headers: HeaderMap, form: Params, assign: bool) -> Response {
    let what = if assign { "assign role" } else { "remove role" };
    let admin = match authorised(&state, &headers, &form, Permission::Administer, what).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (kind, who, role) = match role_form(&form) {
        Ok(f) => f,
        Err(why) => return message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Role not changed", &why),
    };
    let actor = admin.actor();
    let result = change(&state, move |t| {
        if assign { t.assign_role(&actor, kind, &who, role) } else { t.remove_role(&actor, kind, &who, role) }
    })
    .await;
    match result {
        Ok((principal, changed)) => {
            let text = match (assign, changed) {
                (true, true) => format!("{} is now {}.", principal.name, role.as_str()),
                (true, false) => format!("{} was {} already.", principal.name, role.as_str()),
                (false, true) => format!("{} is no longer {}.", principal.name, role.as_str()),
                (false, false) => format!("{} did not have {}.", principal.name, role.as_str()),
            };
            Redirect::to(&format!("/admin/roles?done={}", tenant::util::urlencode(&text))).into_response()
        }
        Err(tenant::TenantError::NotFound(what)) => {
            message(StatusCode::NOT_FOUND, Some(&admin.viewer), "Role not changed", &format!("There is no {what}."))
        }
        Err(tenant::TenantError::Invalid(why)) => {
            message(StatusCode::BAD_REQUEST, Some(&admin.viewer), "Role not changed", &why)
        }
        Err(e) => super::failed(&e.into()),
    }
}
