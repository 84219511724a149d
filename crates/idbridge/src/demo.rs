//! `idbridge demo`: the whole system on one machine with embedded defaults —
//! a generated sample organisation (an LDIF file with passwords), the tenant,
//! the sync engine with password hash sync, and "My Apps", a relying party
//! that signs people in through the tenant's OpenID Connect provider.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use connector_scim::ScimTarget;
use directory::Dn;
use store::SqliteStore;
use sync::engine::{CycleOptions, run_cycle};
use sync::mapping::Flavor;
use tenant::domains::{self, AuthType};
use tenant::oidc::{clients, keys::Alg, myapps};
use tenant::serve::{DEFAULT_MAX_BODY, ServeOptions, serve};
use tenant::tokens::{self, Scope};

use crate::ldif_source::LdifSource;
use crate::sample::{Flavor as SampleFlavor, SampleSpec};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep everything; a temporary directory (removed at the end) when not given.
    pub data: Option<PathBuf>,
    pub listen: SocketAddr,
    pub users: u64,
    pub groups: u64,
    /// Once ready, print one JSON object on standard output (for scripts).
    pub json: bool,
}

/// Removes the temporary demo directory when the demo ends.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub async fn run(o: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let (data, _cleanup) = match &o.data {
        Some(d) => (d.clone(), Cleanup(None)),
        None => {
            let dir = config::files::private_temp_dir("idbridge-demo")?;
            (dir.clone(), Cleanup(Some(dir)))
        }
    };
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let base_dn = Dn::parse("dc=example,dc=org").context("sample base DN")?;
    let spec = SampleSpec {
        users: o.users,
        groups: o.groups,
        contacts: o.users / 20,
        flavor: SampleFlavor::Openldap,
        // A few of the problems real directories have (duplicate addresses,
        // over-long names): the sync quarantines them instead of failing.
        defects_percent: 2,
        seed: 2026,
        base_dn,
        domain: "example.org".into(),
        passwords: true,
    };
    let ldif = data.join("directory.ldif");
    if !ldif.exists() {
        eprintln!("generating a sample organisation: {} users, {} groups …", o.users, o.groups);
        // Password hashes: the owner's only.
        let file = config::files::create_private(&ldif)?;
        spec.write(std::io::BufWriter::new(file), true).with_context(|| format!("writing {}", ldif.display()))?;
    }

    let tenant_dir = data.join("tenant");
    let (store, _) = tenant::open_or_create(&tenant_dir, "demo.idbridge.test").context("opening the demo tenant")?;
    let (admin, sync_token) = {
        let conn = store.lock();
        if domains::get(&conn, "example.org")?.is_none() {
            domains::add(&conn, "example.org", AuthType::ManagedPhs, false)?;
        }
        (
            tokens::create(&conn, Scope::Admin, Some(86_400), Some("demo"))?.1,
            tokens::create(&conn, Scope::Sync, Some(86_400), Some("demo sync"))?.1,
        )
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    let options = ServeOptions { listen: o.listen, tls: None, public_url: None, max_body: DEFAULT_MAX_BODY };
    let server = tokio::spawn(async move {
        serve(
            store,
            options,
            move |_, base| {
                let _ = ready_tx.send(base.to_string());
            },
            crate::tenant_cmd::shutdown_signal(),
        )
        .await
    });
    let base = match ready_rx.await {
        Ok(b) => b,
        Err(_) => {
            // The server task ended before it was ready: its error says why (e.g. the port is taken).
            server.await.context("the tenant task failed")??;
            anyhow::bail!("the tenant did not start");
        }
    };
    let issuer = base.trim_end_matches("/scim/v2").to_string();

    // My Apps: registered afresh for this address (the port may differ between runs).
    let redirect_uri = myapps::redirect_uri(&issuer);
    let client_id = {
        let admin_store = tenant::open_existing(&tenant_dir)?;
        let conn = admin_store.lock();
        if let Some(old) = tenant::store::get_meta(&conn, "myapps_client_id")? {
            let _ = clients::remove(&conn, &old);
        }
        let (client, _) = clients::add(&conn, "My Apps", std::slice::from_ref(&redirect_uri), true, Alg::Rs256)?;
        clients::set_post_logout_uris(&conn, &client.id, &[format!("{issuer}/myapps")])?;
        tenant::store::set_meta(&conn, "myapps_client_id", &client.id)?;
        client.id
    };

    let mut source = LdifSource::new(&ldif);
    let mut sync_store = SqliteStore::open(&data.join("sync.db"))?;
    let mut target = ScimTarget::new(&base, sync_token, None, Duration::from_secs(60))?;
    let options = CycleOptions { password_sync: true, ..CycleOptions::default() };
    let mut progress = crate::sync_cmd::StageProgress::default();
    let report = run_cycle("demo", Flavor::Ldap, &mut source, &mut sync_store, &mut target, &options, &mut progress)
        .await
        .context("synchronising the sample directory")?;
    drop(progress);
    sync_store.record_run("demo", &report)?;
    let examples = spec.sign_in_examples(2);
    let url = format!("{issuer}/myapps");

    if o.json {
        let users: Vec<_> = examples.iter().map(|(u, p)| serde_json::json!({"username": u, "password": p})).collect();
        crate::out!(
            "{}",
            serde_json::json!({
                "url": url, "issuer": issuer, "client_id": client_id, "redirect_uri": redirect_uri,
                "scim": base, "admin_token": admin, "users": users, "data": data.display().to_string(),
            })
        );
    } else {
        crate::out!();
        crate::out!("idbridge demo is ready ({:.1} s).", started.elapsed().as_secs_f64());
        crate::out!();
        crate::out!("  Open {url} and sign in as a synchronised user with their on-premises password:");
        for (user, password) in &examples {
            crate::out!("    {user}   {password}");
        }
        crate::out!();
        crate::out!("What just happened:");
        crate::out!("  - a sample directory with passwords ({{SSHA}}) is in {}", ldif.display());
        crate::out!(
            "  - the sync engine imported {} objects and created {} in the tenant ({} updated, {} errors; planted duplicates wait in quarantine)",
            report.imported,
            report.created,
            report.updated,
            report.errors.len()
        );
        crate::out!(
            "  - password hash sync stored {} passwords; the hashes never touched the sync store",
            report.passwords_synced
        );
        crate::out!(
            "  - the tenant serves SCIM at {base} and OpenID Connect at {issuer}/.well-known/openid-configuration"
        );
        crate::out!();
        crate::out!("Try the SCIM API:");
        crate::out!(
            "  curl -H 'Authorization: Bearer {admin}' '{base}/Users?count=3&attributes=userName,displayName,title'"
        );
        crate::out!();
        crate::out!("Press Ctrl-C to stop.");
    }
    server.await.context("the tenant task failed")??;
    eprintln!("demo stopped");
    Ok(())
}
