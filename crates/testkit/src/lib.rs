//! Test support: throwaway directory servers on loopback, each in its own
//! temporary directory, stopped and removed when dropped (also when a test
//! fails and unwinds).
//!
//! - [`slapd`]: OpenLDAP with back-mdb and syncprov on a free port.
//! - [`ds389`]: 389 Directory Server (content synchronization on) in a temp dir.
//! - [`samba`]: a Samba AD domain controller (LDAP on 127.0.0.1:389).
//! - [`tls`]: a throwaway CA and server certificate (openssl CLI).
//! - [`postgres`]: a PostgreSQL 15 cluster on a free port (as the `postgres` user when root).
//! - [`process`]: temp dirs, free ports, running tools.
//! - [`browser`]: an HTTP client that signs in through the sign-in forms.
//! - [`passkey`]: a software passkey for benchmarks (ES256, attestation "none").
//! - [`harness`]: the set-up tests and benchmarks share (a tenant with a sync
//!   token, a configuration for a test directory, the `ldapsearch` baseline).

pub mod bench;
pub mod browser;
pub mod ds389;
pub mod harness;
pub mod passkey;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod samba;
pub mod slapd;
pub mod tls;

pub use browser::{Browser, Page, form_fields};
pub use ds389::{Ds389, Ds389Options};
pub use harness::{
    LdapServer, SyncTenant, TenantNodes, idbridge, latency_summary, ldapsearch_baseline, openldap_sample, sample_user,
    slapd_with_sample, slapd_with_sample_and, sync_config,
};
pub use postgres::Postgres;
pub use process::{
    KillOnDrop, Measured, TempDir, TestkitError, free_port, measure, measure_run, oathtool, peak_rss_kib,
    public_client_authorize_url, require_tool, spawn_tenant, spawn_tenant_at, wait_until,
};
pub use proxy::RoundRobinProxy;
pub use samba::SambaDc;
pub use slapd::{Slapd, SlapdOptions};
pub use tls::TestCa;
