//! `idbridge pta-agent register|run`: the command line of the pass-through
//! authentication agent (the agent itself is the `pta-agent` crate).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Make this agent's key pair and register it with the tenant (one-time token).
    Register {
        /// The tenant's address, e.g. https://tenant.example.com
        #[arg(long)]
        tenant: String,
        /// A token from `idbridge tenant pta-token create`.
        #[arg(long, env = "IDBRIDGE_PTA_TOKEN")]
        token: String,
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// A name for this agent (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// PEM CA to trust for the tenant's HTTPS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Serve sign-in requests until stopped (or revoked).
    Run {
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Long polls kept open at once (each takes a batch of requests).
        #[arg(long, default_value_t = 4)]
        pollers: usize,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this
        /// address, e.g. 127.0.0.1:9465 (no authentication).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

pub async fn run(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Register { tenant, token, config, name, ca_file } => {
            let request = pta_agent::RegisterRequest { tenant, token, config: config.clone(), name, ca_file };
            let registered = pta_agent::register(request).await?;
            eprintln!(
                "agent {} registered; its private key is in {} (never sent anywhere)",
                registered.agent_id,
                registered.key_file.display()
            );
            if !registered.has_directory {
                eprintln!(
                    "now add a [directory] section to {} (urls, bind_dn, password_file, base_dns), then: idbridge pta-agent run --config {}",
                    config.display(),
                    config.display()
                );
            }
            Ok(())
        }
        AgentCommand::Run { config, pollers, metrics_listen } => {
            let mut server = None;
            let mut telemetry = None;
            if let Some(addr) = metrics_listen {
                let mut registry = telemetry::Registry::default();
                telemetry::register_build_info(&mut registry, "pta-agent");
                let metrics = telemetry::AgentMetrics::register(&mut registry);
                let health = std::sync::Arc::new(telemetry::Health::starting("not connected to the tenant yet"));
                telemetry = Some(pta_agent::Telemetry { metrics, health: health.clone() });
                server = Some(crate::metrics_server::start(addr, registry, health).await?);
            }
            let result = pta_agent::run(&config, pollers, telemetry, crate::tenant_cmd::shutdown_signal()).await;
            if let Some(server) = server {
                server.stop().await;
            }
            result?;
            eprintln!("agent stopped");
            Ok(())
        }
    }
}
