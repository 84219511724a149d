//! `idbridge demo`: the system on one machine with embedded defaults — a
//! generated sample directory (an LDIF file), the tenant, and the sync engine
//! that puts one into the other. Sign-in with on-premises passwords (password
//! hash sync and OpenID Connect) is not built yet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use connector_scim::ScimTarget;
use directory::Dn;
use store::SqliteStore;
use sync::engine::{CycleOptions, run_cycle};
use sync::mapping::Flavor;
use tenant::domains::{self, AuthType};
use tenant::serve::{DEFAULT_MAX_BODY, ServeOptions, serve};
use tenant::tokens::{self, Scope};

use crate::ldif_source::LdifSource;
use crate::sample::{Flavor as SampleFlavor, SampleSpec};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub users: u64,
    pub groups: u64,
}

pub async fn run(o: DemoOptions) -> Result<()> {
    std::fs::create_dir_all(&o.data).with_context(|| format!("cannot create {}", o.data.display()))?;
    let ldif = o.data.join("directory.ldif");
    if !ldif.exists() {
        let base = Dn::parse("dc=example,dc=org").context("sample base DN")?;
        let spec = SampleSpec {
            users: o.users,
            groups: o.groups,
            contacts: o.users / 20,
            flavor: SampleFlavor::Openldap,
            defects_percent: 0,
            seed: 2026,
            base_dn: base,
            domain: "example.org".into(),
        };
        let file = std::fs::File::create(&ldif).with_context(|| format!("cannot create {}", ldif.display()))?;
        spec.write(std::io::BufWriter::new(file), true).with_context(|| format!("writing {}", ldif.display()))?;
        eprintln!("sample directory: {} users, {} groups in {}", o.users, o.groups, ldif.display());
    }

    let (store, _) =
        tenant::open_or_create(&o.data.join("tenant"), "demo.idbridge.test").context("opening the demo tenant")?;
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
    let base = ready_rx.await.context("the tenant did not start")?;

    let mut source = LdifSource::new(&ldif);
    let mut sync_store = SqliteStore::open(&o.data.join("sync.db"))?;
    let mut target = ScimTarget::new(&base, sync_token, None, Duration::from_secs(60))?;
    let report = run_cycle(
        "demo",
        Flavor::Ldap,
        &mut source,
        &mut sync_store,
        &mut target,
        &CycleOptions::default(),
        &mut sync::engine::Quiet,
    )
    .await
    .context("synchronising the sample directory")?;
    sync_store.record_run("demo", &report)?;
    eprintln!(
        "synchronised: {} created, {} updated, {} deleted, {} errors",
        report.created,
        report.updated,
        report.deleted,
        report.errors.len()
    );

    println!("idbridge demo is running. SCIM API: {base}");
    println!("admin token (valid 24 h): {admin}");
    println!();
    println!("try:");
    println!("  curl -H 'Authorization: Bearer {admin}' '{base}/Users?count=3&attributes=userName,displayName,title'");
    println!("  curl -H 'Authorization: Bearer {admin}' '{base}/Groups?count=1&excludedAttributes=members'");
    println!("  edit {} and run `idbridge demo` again: the changes are synchronised", ldif.display());
    println!();
    println!("Signing in with the on-premises password (password hash sync, OpenID Connect) is not built yet.");
    println!("Press Ctrl-C to stop.");
    server.await.context("the tenant task failed")??;
    eprintln!("demo stopped");
    Ok(())
}
