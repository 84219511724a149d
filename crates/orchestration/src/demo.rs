//! `idbridge demo`: the whole system on one machine with embedded defaults —
//! a generated sample organisation (an LDIF file with passwords), the tenant,
//! the sync engine with password hash sync, and "My Apps", a relying party
//! that signs people in through the tenant's OpenID Connect provider.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use directory::Dn;
use tenant::Tenant;
use tenant::domains::AuthType;
use tenant::tokens::Scope;
use tenant_http::{DEFAULT_MAX_BODY, ServeOptions, serve};

use sample::{Flavor as SampleFlavor, SampleSpec};
use sync::engine::{CycleObserver, CycleReport};

use crate::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep everything; a temporary directory (removed at the end) when not given.
    pub data: Option<PathBuf>,
    pub listen: SocketAddr,
    pub users: u64,
    pub groups: u64,
    /// HTTPS: certificate (chain) and key, PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The CA the demo's sync client trusts for that certificate (system roots otherwise).
    pub tls_ca: Option<PathBuf>,
    /// The address people use, when it is not the listen address.
    pub public_url: Option<String>,
}

/// Removes the temporary demo directory when the demo ends.
#[derive(Debug)]
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What the demo set up, for the person to try.
#[derive(Debug, Clone)]
pub struct DemoReady {
    /// My Apps, where people sign in.
    pub url: String,
    pub issuer: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// The SCIM base.
    pub scim: String,
    pub admin_token: String,
    /// Synchronised users and their on-premises passwords.
    pub users: Vec<(String, String)>,
    pub data: PathBuf,
    /// The sample directory.
    pub ldif: PathBuf,
    /// The first sync cycle.
    pub report: CycleReport,
    /// The demo's `idbridge.toml` (for `idbridge sync …`).
    pub config: PathBuf,
}

/// Keeps the cycle's report (the demo prints it its own way).
struct Collect<'a> {
    observer: &'a mut (dyn CycleObserver + Send),
    report: Option<CycleReport>,
}

impl crate::sync::CycleEvents for Collect<'_> {
    fn observer(&mut self) -> &mut (dyn CycleObserver + Send) {
        self.observer
    }

    fn finished(&mut self, _source: &str, report: &CycleReport, _elapsed: Duration) {
        self.report = Some(report.clone());
    }

    fn failed(&mut self, _error: &Error, _retry_in: Duration) {}
}

/// A running demo: the tenant serves until the shutdown future given to
/// [`start`] completes.
#[derive(Debug)]
pub struct Demo {
    pub ready: DemoReady,
    server: tokio::task::JoinHandle<std::result::Result<(), tenant::TenantError>>,
    _cleanup: Cleanup,
}

impl Demo {
    /// Waits until the tenant stops; the temporary directory goes with it.
    pub async fn wait(self) -> Result<()> {
        match self.server.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(Error::Refused(format!("the tenant task failed: {e}"))),
        }
    }
}

/// Generates the sample organisation (first run of a data directory),
/// starts the tenant, registers My Apps for this address and runs one sync
/// cycle with password hash sync. `notice` is told what takes time.
pub async fn start(
    o: DemoOptions,
    progress: &mut (dyn CycleObserver + Send),
    shutdown: impl Future<Output = ()> + Send + 'static,
    notice: &mut dyn FnMut(&str),
) -> Result<Demo> {
    let (data, cleanup) = match &o.data {
        Some(d) => (d.clone(), Cleanup(None)),
        None => {
            let dir = config::files::private_temp_dir("idbridge-demo")?;
            (dir.clone(), Cleanup(Some(dir)))
        }
    };
    std::fs::create_dir_all(&data).on("create", &data)?;
    let base_dn =
        Dn::parse("dc=example,dc=org").map_err(|error| Error::Dn { what: "the sample's base DN".into(), error })?;
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
        notice(&format!("generating a sample organisation: {} users, {} groups …", o.users, o.groups));
        // Password hashes: the owner's only.
        let file = config::files::create_private(&ldif)?;
        spec.write(std::io::BufWriter::new(file), true).on("write", &ldif)?;
    }

    let tenant_dir = data.join("tenant");
    let (tenant, _) = Tenant::open_or_create(&tenant_dir, "demo.idbridge.test")?;
    tenant.ensure_domain("demo", "example.org", AuthType::ManagedPhs)?;
    let (_, admin) = tenant.create_token("demo", Scope::Admin, Some(86_400), Some("demo"), &[])?;
    let (_, sync_token) = tenant.create_token("demo", Scope::Sync, Some(86_400), Some("demo sync"), &[])?;
    let admin_tenant = tenant.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    let options = ServeOptions {
        listen: o.listen,
        tls: o.tls.clone(),
        public_url: o.public_url.clone(),
        max_body: DEFAULT_MAX_BODY,
        loopback_as_localhost: true,
    };
    let server = tokio::spawn(async move {
        serve(
            tenant,
            options,
            move |_, base| {
                let _ = ready_tx.send(base.to_string());
            },
            shutdown,
        )
        .await
    });
    let base = match ready_rx.await {
        Ok(b) => b,
        Err(_) => {
            // The server task ended before it was ready: its error says why (e.g. the port is taken).
            return match server.await {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(())) => Err(Error::Refused("the tenant stopped before it was ready".into())),
                Err(e) => Err(Error::Refused(format!("the tenant task failed: {e}"))),
            };
        }
    };
    let issuer = base.trim_end_matches("/scim/v2").to_string();

    // My Apps: registered afresh for this address (the port may differ between runs).
    let redirect_uri = tenant::service::my_apps_redirect_uri(&issuer);
    let client_id = admin_tenant.register_my_apps("demo", &issuer)?;

    // The demo's own configuration, so `idbridge sync status|history|explain|…`
    // work on its data; the cycle below runs through it like any other.
    let config_path = data.join("idbridge.toml");
    let token_file = data.join("sync.token");
    config::files::write_secret(&token_file, format!("{sync_token}\n").as_bytes())?;
    let quoted = |text: &str| toml_edit::Value::from(text).to_string();
    let ca = match &o.tls_ca {
        Some(path) => format!("ca_file = {}\n", quoted(&path.display().to_string())),
        None => String::new(),
    };
    let text = format!(
        "# Written by `idbridge demo` at each start: the demo's directory and tenant.\n\
         # Try: idbridge sync status --config {}\n\
         [[source]]\nname = \"demo\"\nkind = \"ldif\"\npath = \"directory.ldif\"\npassword_hash_sync = true\n\n\
         [tenant]\nurl = {}\ntoken_file = \"sync.token\"\n{ca}\n[sync]\nstate = \"sync.db\"\n",
        config_path.display(),
        quoted(&base)
    );
    config::files::write_atomically(&config_path, text.as_bytes())?;
    let mut events = Collect { observer: progress, report: None };
    let once = crate::sync::RunOptions { once: true, ..crate::sync::RunOptions::default() };
    crate::sync::run(&config_path, once, &mut events, std::future::pending()).await?;
    let report = events.report.ok_or_else(|| Error::Refused("the demo's sync cycle reported nothing".into()))?;
    let ready = DemoReady {
        url: format!("{issuer}/myapps"),
        issuer,
        client_id,
        redirect_uri,
        scim: base,
        admin_token: admin,
        users: spec.sign_in_examples(2),
        data,
        ldif,
        report,
        config: config_path,
    };
    Ok(Demo { ready, server, _cleanup: cleanup })
}
