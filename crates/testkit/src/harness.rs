//! Set-up that tests and benchmarks share: running the `idbridge` binary,
//! a tenant with a sync token, a configuration pointing at a test
//! directory, and the `ldapsearch` baseline benchmarks compare against.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{KillOnDrop, TestkitError, measure, run, spawn_tenant};
use crate::slapd::Slapd;

/// Runs `idbridge ARGS` (the binary at `exe`) to success; its standard output.
pub fn idbridge(exe: &Path, args: &[&str]) -> Result<String, TestkitError> {
    run(Command::new(exe).args(args).env("RUST_LOG", "warn"), None)
}

/// A running tenant with a verified domain and a sync token in a file.
#[derive(Debug)]
pub struct SyncTenant {
    pub process: KillOnDrop,
    /// The tenant's data directory.
    pub data: PathBuf,
    /// The SCIM base URL.
    pub base: String,
    pub token: String,
    pub token_file: PathBuf,
}

impl SyncTenant {
    /// Starts `idbridge tenant serve` with its data in `dir/tenant`, adds
    /// `domain` and writes a sync token to `dir/token`. The process is
    /// stopped when the value is dropped.
    pub fn start(exe: &Path, dir: &Path, domain: &str) -> Result<SyncTenant, TestkitError> {
        SyncTenant::start_with(exe, dir, domain, &[])
    }

    /// [`SyncTenant::start`] with more arguments for `tenant serve`.
    pub fn start_with(exe: &Path, dir: &Path, domain: &str, serve_args: &[&str]) -> Result<SyncTenant, TestkitError> {
        let data = dir.join("tenant");
        let (child, base) = spawn_tenant(exe, &data, serve_args)?;
        let process = KillOnDrop(child);
        let data_arg = data.display().to_string();
        idbridge(exe, &["tenant", "domain", "add", "--data", &data_arg, domain])?;
        let token =
            idbridge(exe, &["tenant", "token", "create", "--data", &data_arg, "--scope", "sync"])?.trim().to_string();
        let token_file = dir.join("token");
        std::fs::write(&token_file, &token).map_err(crate::process::io_err("writing the token file"))?;
        Ok(SyncTenant { process, data, base, token, token_file })
    }
}

/// Tenant nodes (`idbridge tenant serve` processes) on one throwaway
/// PostgreSQL behind a round-robin proxy, all with the proxy's address as
/// their public URL; the processes are stopped when the value is dropped.
#[derive(Debug)]
pub struct TenantNodes {
    exe: PathBuf,
    pub pg: crate::Postgres,
    pub proxy: crate::RoundRobinProxy,
    /// `--database URL --database-password-file F --secrets-key K`.
    pub location: Vec<String>,
    pub ports: Vec<u16>,
    processes: Vec<Option<KillOnDrop>>,
    /// What clients use: the round-robin proxy, or HAProxy ([`TenantNodes::behind_haproxy`]).
    pub public: String,
    haproxy: Option<KillOnDrop>,
}

impl TenantNodes {
    /// `count` nodes behind HAProxy (Debian's `haproxy`) balancing every
    /// request round robin (`option http-server-close`), so a browser that
    /// keeps its connection open still reaches the next node each time.
    pub fn behind_haproxy(exe: &Path, dir: &Path, count: usize) -> Result<TenantNodes, TestkitError> {
        crate::process::require_tool("/usr/sbin/haproxy", "haproxy")?;
        let port = crate::free_port()?;
        let mut nodes = TenantNodes::start_at(exe, dir, count, Some(format!("http://127.0.0.1:{port}")))?;
        let servers: String = nodes
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server node{i} 127.0.0.1:{p} check inter 500ms fall 1 rise 1\n"))
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-server-close\n  option redispatch\n  retries 2\nfrontend web\n  bind 127.0.0.1:{port}\n  default_backend nodes\nbackend nodes\n  balance roundrobin\n{servers}"
            ),
        )
        .map_err(crate::process::io_err("writing the HAProxy configuration"))?;
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(crate::process::io_err("starting haproxy"))?;
        nodes.haproxy = Some(KillOnDrop(child));
        if !crate::wait_until(std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) {
            return Err(TestkitError::Other("HAProxy did not start listening within 30 s".into()));
        }
        Ok(nodes)
    }

    /// `count` nodes behind the round-robin proxy, the secrets key in `dir/secrets.key`.
    pub fn start(exe: &Path, dir: &Path, count: usize) -> Result<TenantNodes, TestkitError> {
        TenantNodes::start_at(exe, dir, count, None)
    }

    fn start_at(exe: &Path, dir: &Path, count: usize, public: Option<String>) -> Result<TenantNodes, TestkitError> {
        let pg = crate::Postgres::start()?;
        let location = vec![
            "--database".to_string(),
            pg.url.clone(),
            "--database-password-file".into(),
            pg.password_file().display().to_string(),
            "--secrets-key".into(),
            dir.join("secrets.key").display().to_string(),
        ];
        let proxy = crate::RoundRobinProxy::start()?;
        let ports = (0..count).map(|_| crate::free_port()).collect::<Result<Vec<u16>, _>>()?;
        let public = public.unwrap_or_else(|| proxy.url());
        let mut nodes = TenantNodes {
            exe: exe.to_path_buf(),
            pg,
            proxy,
            location,
            ports,
            processes: Vec::new(),
            public,
            haproxy: None,
        };
        for i in 0..count {
            let process = nodes.start_node(i)?;
            nodes.processes.push(Some(process));
        }
        let addrs: Vec<std::net::SocketAddr> =
            nodes.ports.iter().map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], *port))).collect();
        nodes.proxy.set_backends(&addrs);
        Ok(nodes)
    }

    fn start_node(&self, i: usize) -> Result<KillOnDrop, TestkitError> {
        let port = self.ports.get(i).ok_or_else(|| TestkitError::Other(format!("no node {i}")))?;
        let listen = format!("127.0.0.1:{port}");
        let location: Vec<&str> = self.location.iter().map(String::as_str).collect();
        let (child, _) = crate::process::spawn_tenant_at(
            &self.exe,
            &location,
            &["--listen", &listen, "--public-url", &self.public, "--initial-domain", "lab.example.test"],
        )?;
        Ok(KillOnDrop(child))
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.processes.get_mut(i).and_then(Option::take) {
            let _ = node.0.kill();
            let _ = node.0.wait();
        }
    }

    /// The nodes' process ids (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().flatten().map(|p| p.0.id()).collect()
    }

    /// `idbridge tenant ARGS --database …`: its standard output.
    pub fn admin(&self, args: &[&str]) -> Result<String, TestkitError> {
        let mut all: Vec<&str> = vec!["tenant"];
        all.extend(args);
        all.extend(self.location.iter().map(String::as_str));
        idbridge(&self.exe, &all)
    }

    /// A new public client's authorize URL at the public address (see
    /// [`crate::public_client_authorize_url`]).
    pub fn public_client_authorize_url(&self) -> Result<String, TestkitError> {
        let location: Vec<&str> = self.location.iter().map(String::as_str).collect();
        crate::process::public_client_authorize_url_at(&self.exe, &location, &self.public)
    }

    /// Verifies example.org and writes a sync token to `dir/token`.
    pub fn sync_token(&self, dir: &Path) -> Result<String, TestkitError> {
        self.admin(&["domain", "add", "example.org"])?;
        let token = self.admin(&["token", "create", "--scope", "sync"])?.trim().to_string();
        std::fs::write(dir.join("token"), &token).map_err(crate::process::io_err("writing the token file"))?;
        Ok(token)
    }
}

/// A test directory server a configuration can point at (slapd, 389-ds).
pub trait LdapServer {
    fn url(&self) -> &str;
    fn admin_dn(&self) -> &str;
    fn base_dn(&self) -> &str;
    /// The admin password in a file (for `password_file`).
    fn password_file(&self) -> Result<PathBuf, TestkitError>;
}

impl LdapServer for Slapd {
    fn url(&self) -> &str {
        &self.url
    }
    fn admin_dn(&self) -> &str {
        Slapd::admin_dn(self)
    }
    fn base_dn(&self) -> &str {
        Slapd::base_dn(self)
    }
    fn password_file(&self) -> Result<PathBuf, TestkitError> {
        Slapd::password_file(self)
    }
}

/// An `idbridge.toml` with one LDAP source named `name` reading all of
/// `slapd` as its admin (with `source_extra`, more keys of the source), a
/// `[tenant]` when given (SCIM base, token file), and `extra` appended
/// (more sections, such as `[sync]`).
pub fn sync_config(
    slapd: &impl LdapServer,
    name: &str,
    source_extra: &str,
    tenant: Option<(&str, &Path)>,
    extra: &str,
) -> Result<String, TestkitError> {
    let password = slapd.password_file()?;
    let mut text = format!(
        "[[source]]\nname = \"{name}\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dns = [\"{}\"]\n{source_extra}",
        slapd.url(),
        slapd.admin_dn(),
        password.display(),
        slapd.base_dn()
    );
    if let Some((base, token_file)) = tenant {
        text.push_str(&format!("\n[tenant]\nurl = \"{base}\"\ntoken_file = \"{}\"\n", token_file.display()));
    }
    text.push_str(extra);
    Ok(text)
}

/// A pass-through agent's configuration for `slapd` (its admin binds;
/// plain LDAP on loopback is allowed outright).
pub fn pta_agent_config(slapd: &Slapd) -> Result<String, TestkitError> {
    Ok(format!(
        "allow_plain_binds = true\n[directory]\nname = \"lab\"\nurls = [\"{}\"]\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dns = [\"{}\"]\n",
        slapd.url,
        slapd.admin_dn(),
        slapd.password_file()?.display(),
        slapd.base_dn()
    ))
}

/// The benchmarks' baseline: `ldapsearch -E pr=1000` of what matches
/// `filter` under the directory's base (attributes `*` and `attrs`), timed
/// with its peak RSS: (seconds, KiB), the best of three runs — the first
/// after a bulk load also warms the server's caches.
pub fn ldapsearch_baseline(slapd: &Slapd, filter: &str, attrs: &[&str]) -> Result<(f64, u64), TestkitError> {
    let password = slapd.password_file()?;
    let mut best = (f64::MAX, 0);
    for _ in 0..3 {
        let (seconds, kib, _) = measure(
            Command::new("ldapsearch")
                .args(["-x", "-LLL", "-H", &slapd.url, "-D", slapd.admin_dn(), "-y"])
                .arg(&password)
                .args(["-b", slapd.base_dn(), "-E", "pr=1000/noprompt", filter, "*"])
                .args(attrs),
        )?;
        if seconds < best.0 {
            best = (seconds, kib);
        }
    }
    Ok(best)
}

/// The sample user with this `employeeNumber` (the sample numbers users from
/// 100,000): its DN and mail.
pub fn sample_user(slapd: &Slapd, number: u64) -> Result<(String, String), TestkitError> {
    let out = Command::new("ldapsearch")
        .args(["-x", "-LLL", "-H", &slapd.url, "-D", slapd.admin_dn(), "-w", slapd.admin_password()])
        .args(["-b", slapd.base_dn()])
        .arg(format!("(employeeNumber={number})"))
        .args(["dn", "mail"])
        .output()
        .map_err(crate::process::io_err("running ldapsearch"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let value = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_string);
    match (value("dn: "), value("mail: ")) {
        (Some(dn), Some(mail)) => Ok((dn, mail)),
        _ => Err(TestkitError::Other(format!("no sample user with employeeNumber {number}"))),
    }
}

/// The sample organisation the benchmarks load: OpenLDAP flavour under
/// `dc=example,dc=org`, no OUs (slapd's bulk load makes them), no defects.
pub fn openldap_sample(users: u64, groups: u64, seed: u64) -> Result<sample::SampleSpec, TestkitError> {
    let base_dn = directory::Dn::parse("dc=example,dc=org").map_err(|e| TestkitError::Other(e.to_string()))?;
    Ok(sample::SampleSpec {
        users,
        groups,
        contacts: 0,
        flavor: sample::Flavor::Openldap,
        defects_percent: 0,
        seed,
        base_dn,
        domain: "example.org".into(),
        passwords: false,
    })
}

/// Writes `spec` as LDIF to `dir/sample.ldif` and starts a slapd loaded
/// with it: (the server, the LDIF file).
pub fn slapd_with_sample(dir: &Path, spec: &sample::SampleSpec) -> Result<(Slapd, PathBuf), TestkitError> {
    slapd_with_sample_and(dir, spec, crate::slapd::SlapdOptions::default())
}

/// [`slapd_with_sample`] with other `options` (the sample replaces `bulk_ldif`).
pub fn slapd_with_sample_and(
    dir: &Path,
    spec: &sample::SampleSpec,
    options: crate::slapd::SlapdOptions,
) -> Result<(Slapd, PathBuf), TestkitError> {
    let ldif = dir.join("sample.ldif");
    let file = std::fs::File::create(&ldif).map_err(crate::process::io_err("creating the sample LDIF"))?;
    spec.write(std::io::BufWriter::with_capacity(1 << 16, file), false)
        .map_err(crate::process::io_err("writing the sample LDIF"))?;
    let options = crate::slapd::SlapdOptions { bulk_ldif: Some(ldif.clone()), ..options };
    Ok((Slapd::start(options)?, ldif))
}

/// `p50 … ms  p99 … ms  max … ms` of these durations; the p99 only from
/// 100 samples on (fewer cannot carry one), said so otherwise.
pub fn latency_summary(samples: &[std::time::Duration]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| -> f64 {
        let index = ((ms.len().saturating_sub(1)) as f64 * p).round() as usize;
        ms.get(index).copied().unwrap_or(f64::NAN)
    };
    if ms.len() >= 100 {
        format!("p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms", at(0.5), at(0.99), at(1.0))
    } else {
        format!("p50 {:.1} ms  max {:.1} ms ({} samples: too few for a p99)", at(0.5), at(1.0), ms.len())
    }
}
