//! `idbridge`: the command line. Parses arguments and `idbridge.toml`, wires
//! the libraries together, and reports progress and errors to people.

/// Import streams allocate many small buffers (one per BER element); mimalloc
/// handles that pattern much faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "cloud")]
mod demo_cmd;
mod idfix_cmd;
mod init_cmd;
mod metrics_server;
mod migrate_cmd;
mod progress;
mod prompt;
mod pta_agent;
mod sync_cmd;
mod tenant_cmd;
mod when;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use connector_ldap::{LdapSettings, Secret, TlsSettings};
use directory::Dn;

#[derive(Debug, Parser)]
#[command(
    name = "idbridge",
    version,
    about = "Hybrid identity bridge: keeps a cloud directory in step with on-premises directories"
)]
struct Cli {
    /// Log as JSON lines (for log collectors).
    #[arg(long, global = true)]
    log_json: bool,
    /// More detail in logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How `source dump` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DumpFormat {
    Ldif,
    Json,
}

impl From<DumpFormat> for orchestration::dump::DumpFormat {
    fn from(f: DumpFormat) -> Self {
        match f {
            DumpFormat::Ldif => orchestration::dump::DumpFormat::Ldif,
            DumpFormat::Json => orchestration::dump::DumpFormat::Json,
        }
    }
}

/// The sample's flavour on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SampleFlavor {
    /// Active Directory: user/group/contact objects, UPNs, proxyAddresses.
    Ad,
    /// OpenLDAP: inetOrgPerson and groupOfNames.
    Openldap,
}

impl From<SampleFlavor> for sample::Flavor {
    fn from(f: SampleFlavor) -> Self {
        match f {
            SampleFlavor::Ad => sample::Flavor::Ad,
            SampleFlavor::Openldap => sample::Flavor::Openldap,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on one machine: a sample directory synchronised into a tenant.
    #[cfg(feature = "cloud")]
    Demo {
        /// Where the demo keeps its files (sample directory, tenant, sync state);
        /// by default a temporary directory, removed when the demo stops.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8443", value_parser = parse_listen)]
        listen: std::net::SocketAddr,
        /// Size of the generated organisation (first run with a --data directory only).
        #[arg(long, default_value_t = 2000)]
        users: u64,
        #[arg(long, default_value_t = 200)]
        groups: u64,
        /// Once ready, print one JSON object (url, issuer, client_id, redirect_uri, users) on standard output.
        #[arg(long)]
        json: bool,
        /// Serve HTTPS with this PEM certificate (chain) — needed to listen beyond loopback.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A PEM CA the demo's own sync client trusts for that certificate (system roots otherwise).
        #[arg(long, requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
        /// The address people use (e.g. https://demo.example.com:8443), when it is not the listen address.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Set-up wizard: from nothing (or an existing idbridge.toml) to a checked configuration.
    /// Exit codes: 0 written, 2 declined, 3 a check failed (the message says how to fix it).
    Init(Box<init_cmd::InitArgs>),
    /// The pass-through authentication agent (runs on-premises).
    PtaAgent {
        #[command(subcommand)]
        command: pta_agent::AgentCommand,
    },
    /// Find and safely fix what would break directory sync (the IdFix successor).
    Idfix {
        #[command(subcommand)]
        command: idfix_cmd::IdfixCommand,
    },
    /// Move from Entra Connect: its exported configuration becomes idbridge's.
    Migrate {
        #[command(subcommand)]
        command: migrate_cmd::MigrateCommand,
    },
    /// Realistic directory data.
    Sample {
        #[command(subcommand)]
        command: SampleCommand,
    },
    /// Look at an on-premises directory through the connector.
    Source {
        #[command(subcommand)]
        command: SourceCommand,
    },
    /// The sync engine: on-premises directory → tenant.
    Sync {
        #[command(subcommand)]
        command: sync_cmd::SyncCommand,
    },
    /// The cloud side: run and administer the tenant.
    Tenant {
        #[command(subcommand)]
        command: tenant_cmd::TenantCommand,
    },
    /// Print a shell completion script (e.g. `idbridge completions bash > /etc/bash_completion.d/idbridge`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (idbridge.1 and one per subcommand) into a directory (packaging).
    #[command(hide = true)]
    Manpages {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SampleCommand {
    /// Write users, groups and contacts as LDIF.
    Generate {
        #[arg(long, default_value_t = 100)]
        users: u64,
        #[arg(long, default_value_t = 10)]
        groups: u64,
        #[arg(long, default_value_t = 0)]
        contacts: u64,
        #[arg(long, value_enum, default_value = "openldap")]
        flavor: SampleFlavor,
        /// Percentage of users with a problem IdFix looks for (duplicates, bad characters, over-long values, .local domains).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        defects: u8,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Base DN of the data (default dc=example,dc=org; AD flavor DC=example,DC=test).
        #[arg(long)]
        base_dn: Option<String>,
        /// Mail and UPN domain (default: from the base DN's dc= parts).
        #[arg(long)]
        domain: Option<String>,
        /// Leave out the OU entries (when they exist already).
        #[arg(long)]
        no_ous: bool,
        /// Give users passwords (userPassword, {SSHA}), deterministic from the seed.
        #[arg(long)]
        passwords: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SourceCommand {
    /// Print every object the connector imports (or, with --delta, what changed).
    Dump {
        /// Configuration file; or give --url and friends instead.
        #[arg(long, conflicts_with = "url")]
        config: Option<PathBuf>,
        /// Which [[source]] of the config file (needed when there are several).
        #[arg(long, requires = "config")]
        source: Option<String>,
        /// Server URL (repeat for failover), for a quick look without a config file.
        #[arg(long)]
        url: Vec<String>,
        #[arg(long)]
        bind_dn: Option<String>,
        /// File holding the bind password (never give a password on the command line).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Environment variable holding the bind password.
        #[arg(long)]
        password_env: Option<String>,
        #[arg(long)]
        base_dn: Vec<String>,
        #[arg(long)]
        starttls: bool,
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
        /// Only what changed since the dump that wrote --state.
        #[arg(long)]
        delta: bool,
        /// Keeps the watermark (and the ids seen) between dumps.
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "ldif")]
        format: DumpFormat,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `println!` for command output: a closed pipe (`| head`) ends the
/// process quietly instead of panicking; other write errors are reported.
#[macro_export]
macro_rules! out {
    () => { $crate::print_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::print_line(format_args!($($arg)*)) };
}

pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `--listen`: an address and port, or a host name and port
/// (`localhost:8443`); a name is resolved, its IPv4 address preferred.
#[cfg(feature = "cloud")]
pub(crate) fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?} is not HOST:PORT ({e}); e.g. 127.0.0.1:8443 or localhost:8443"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(json: bool, verbose: u8, quiet: bool) {
    let default = match verbose {
        // The demo and the wizard print their own story; the log shows only what went wrong.
        0 if quiet => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

fn main() -> ExitCode {
    // Before any thread exists (see `when`).
    when::init_local_offset();
    let cli = Cli::parse();
    #[cfg(feature = "cloud")]
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Init(_));
    #[cfg(not(feature = "cloud"))]
    let quiet = matches!(cli.command, Command::Init(_));
    init_logging(cli.log_json, cli.verbose, quiet);
    // Worker threads: IO runs beside the command's own work (an export plans
    // its next batch while the tenant takes the current one).
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): done, quietly, like any Unix tool.
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<migrate_cmd::Partial>().is_some() {
                return ExitCode::from(2);
            }
            match e.downcast_ref::<orchestration::init::InitError>() {
                Some(stop) => ExitCode::from(stop.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        #[cfg(feature = "cloud")]
        Command::Demo { data, listen, users, groups, json, tls_cert, tls_key, tls_ca, public_url } => {
            let tls = tls_cert.zip(tls_key);
            let options = orchestration::demo::DemoOptions { data, listen, users, groups, tls, tls_ca, public_url };
            demo_cmd::run(options, json).await
        }
        Command::Init(args) => Ok(init_cmd::run(*args).await?),
        Command::Tenant { command } => tenant_cmd::run(command).await,
        Command::Idfix { command } => idfix_cmd::run(command).await,
        Command::Migrate { command } => migrate_cmd::run(command).await,
        Command::PtaAgent { command } => pta_agent::run(command).await,
        Command::Sync { command } => sync_cmd::run(command).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            // Into memory first: the generator panics on a closed pipe, `out!` does not.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "idbridge", &mut script);
            out!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(())
        }
        Command::Manpages { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing the pages into {}", out.display()))?;
            Ok(())
        }
        Command::Sample {
            command:
                SampleCommand::Generate {
                    users,
                    groups,
                    contacts,
                    flavor,
                    defects,
                    seed,
                    base_dn,
                    domain,
                    no_ous,
                    passwords,
                    out,
                },
        } => {
            let flavor = sample::Flavor::from(flavor);
            let base_text = base_dn.unwrap_or_else(|| match flavor {
                sample::Flavor::Ad => "DC=example,DC=test".into(),
                sample::Flavor::Openldap => "dc=example,dc=org".into(),
            });
            let base_dn = Dn::parse(&base_text).with_context(|| format!("--base-dn {base_text:?}"))?;
            let domain = match domain.or_else(|| sample::domain_of(&base_dn)) {
                Some(d) => d,
                None => bail!("--base-dn {base_text:?} has no dc= parts to derive a mail domain from; give --domain"),
            };
            let spec = sample::SampleSpec {
                users,
                groups,
                contacts,
                flavor,
                defects_percent: defects,
                seed,
                base_dn,
                domain,
                passwords,
            };
            let file = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let n = spec
                .write(std::io::BufWriter::with_capacity(1 << 16, file), !no_ous)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {n} entries to {}", out.display());
            Ok(())
        }
        Command::Source {
            command:
                SourceCommand::Dump {
                    config,
                    source,
                    url,
                    bind_dn,
                    password_file,
                    password_env,
                    base_dn,
                    starttls,
                    ca_file,
                    page_size,
                    delta,
                    state,
                    format,
                    out,
                },
        } => {
            let (name, settings) = match config {
                Some(path) => {
                    let cfg = config::Config::load(&path)?;
                    let src = cfg.source(source.as_deref()).with_context(|| format!("in {}", path.display()))?;
                    (src.name.clone(), src.to_settings()?)
                }
                None => {
                    if url.is_empty() {
                        bail!("give --config idbridge.toml, or --url ldap://HOST (with --bind-dn and --password-file)");
                    }
                    let password =
                        config::resolve_password("command line", password_file.as_deref(), password_env.as_deref())?;
                    if bind_dn.is_some() && password.is_none() {
                        bail!("--bind-dn needs --password-file FILE or --password-env VAR");
                    }
                    (url.join(" "), quick_settings(url, bind_dn, password, &base_dn, starttls, ca_file, page_size)?)
                }
            };
            let started = std::time::Instant::now();
            let mut progress = progress::StageProgress::default();
            let request = orchestration::dump::DumpRequest { name, settings, delta, state, format: format.into(), out };
            let report = orchestration::dump::run(request, &mut progress).await?;
            let rate = progress.rate();
            progress.done();
            let mode = match &report.mode {
                sync::ImportMode::Full => "full".to_string(),
                sync::ImportMode::Delta => "delta".to_string(),
                sync::ImportMode::FullFallback { reason } => format!("full (delta impossible: {reason})"),
            };
            eprintln!(
                "{mode} import from {}: {} objects, {} deletions{} in {:.1} s ({:.0} objects/s)",
                report.server,
                report.upserts,
                report.deletions,
                if report.unchanged > 0 { format!(", {} unchanged", report.unchanged) } else { String::new() },
                started.elapsed().as_secs_f64(),
                rate
            );
            Ok(())
        }
    }
}

fn quick_settings(
    urls: Vec<String>,
    bind_dn: Option<String>,
    password: Option<Secret>,
    base_dns: &[String],
    starttls: bool,
    ca_file: Option<PathBuf>,
    page_size: u32,
) -> Result<LdapSettings> {
    let base_dns = base_dns
        .iter()
        .map(|b| Dn::parse(b).with_context(|| format!("--base-dn {b:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(LdapSettings {
        urls,
        bind_dn,
        password,
        tls: TlsSettings { starttls, ca_file, insecure_skip_verify: false },
        base_dns,
        page_size,
        ..LdapSettings::default()
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command says what it does in `--help`, in words of its own: a
    /// command without a doc comment shows its flattened arguments' doc
    /// instead, which then repeats elsewhere.
    #[test]
    fn every_command_has_its_own_description() {
        let mut missing = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let mut stack = vec![(String::from("idbridge"), super::Cli::command())];
        while let Some((path, command)) = stack.pop() {
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                match sub.get_about().map(|a| a.to_string()) {
                    None => missing.push(format!("{name}: no description")),
                    Some(about) => {
                        if let Some(other) = seen.insert(about.clone(), name.clone()) {
                            missing.push(format!("{name}: the same description as {other}: {about}"));
                        }
                    }
                }
                stack.push((name, sub.clone()));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
