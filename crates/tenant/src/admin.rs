//! `/admin/v1`: tenant administration over HTTP for tools on other hosts
//! (`idbridge init` against a remote tenant). Admin-scoped tokens only.
//!
//! Wire types: `proto::admin`. `PUT /admin/v1/domains/{name}` adds the
//! domain or changes how its users sign in; federation is set up on the
//! tenant's host (`idbridge tenant domain federate`), where the identity
//! provider's secrets are given.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use proto::admin::{DomainInfo, DomainList, SetDomainAuth};
use scim::{ScimError, ScimType};
use serde_json::json;

use crate::domains::{self, AuthType};
use crate::http::{ApiError, AppState, Caller, authenticate, db, json_body, scim_json};
use crate::tokens::Scope;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new().route("/admin/v1/domains", get(list)).route("/admin/v1/domains/{name}", axum::routing::put(set))
}

async fn admin(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers, true).await?;
    if caller.scope != Scope::Admin {
        return Err(ScimError::status(
            403,
            format!("a {} token may not administer the tenant; use one made with --scope admin", caller.scope),
        )
        .into());
    }
    Ok(caller)
}

async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&state, &headers).await?;
    let list = db(&state, |conn| Ok(domains::list(conn)?)).await?;
    let domains = list.into_iter().map(|d| DomainInfo { name: d.name, auth: d.auth, initial: d.initial }).collect();
    Ok(scim_json(StatusCode::OK, &DomainList { domains }))
}

async fn set(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = admin(&state, &headers).await?;
    let body = json_body(&state, request).await?;
    let Ok(SetDomainAuth { auth }) = serde_json::from_value(body) else {
        return Err(ScimError::new(ScimType::InvalidValue, "give {\"auth\": \"managed-phs\" | \"managed-pta\"}").into());
    };
    if auth == AuthType::Federated {
        return Err(ScimError::new(
            ScimType::InvalidValue,
            "federate a domain on the tenant's host: idbridge tenant domain federate (the identity provider's secrets are given there)",
        )
        .into());
    }
    let actor = format!("token:{}", caller.id);
    let (domain, created) = db(&state, move |conn| {
        let (domain, created) = match domains::get(conn, &name)? {
            Some(d) if d.auth == auth => (d, false),
            Some(_) => {
                domains::set_auth(conn, &name, auth)?;
                (domains::get(conn, &name)?.ok_or_else(|| ScimError::status(404, "the domain vanished"))?, false)
            }
            None => (domains::add(conn, &name, auth, false)?, true),
        };
        crate::audit::record(
            conn,
            &actor,
            if created { "domain-add" } else { "domain-set" },
            None,
            Some(&domain.name),
            Some(&json!({"auth": auth.as_str()})),
        )?;
        Ok((domain, created))
    })
    .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(scim_json(status, &DomainInfo { name: domain.name, auth: domain.auth, initial: domain.initial }))
}
