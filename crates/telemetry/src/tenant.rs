//! The tenant's metrics: HTTP requests by route, sign-ins, lockouts and
//! pass-through authentication.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::{Labels, labels};

/// How a user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    /// A password checked by the tenant (password hash sync or cloud).
    Password,
    /// Checked on-premises by an agent.
    PassThrough,
    /// Federated to another identity provider.
    Federated,
    /// A passkey alone, without a name or password.
    Passkey,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInMethod::Password => "password",
            SignInMethod::PassThrough => "pass_through",
            SignInMethod::Federated => "federated",
            SignInMethod::Passkey => "passkey",
        }
    }
}

/// How a sign-in ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInOutcome {
    Success,
    /// A wrong password, or a user that does not exist (the tenant never tells them apart).
    WrongPassword,
    /// Smart lockout refused it.
    Locked,
    /// The account may not sign in (disabled, password expired, must change).
    Refused,
    /// No pass-through agent answered.
    NoAgent,
    /// Anything else that went wrong.
    Error,
}

impl SignInOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInOutcome::Success => "success",
            SignInOutcome::WrongPassword => "wrong_password",
            SignInOutcome::Locked => "locked",
            SignInOutcome::Refused => "refused",
            SignInOutcome::NoAgent => "no_agent",
            SignInOutcome::Error => "error",
        }
    }
}

/// The tenant's families.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    http: Family<Labels, Counter>,
    signins: Family<Labels, Counter>,
    signin_duration: Family<Labels, Histogram, fn() -> Histogram>,
    lockouts: Counter,
    pta_requests: Family<Labels, Counter>,
    pta_agents_online: Gauge,
    pta_domains: Gauge,
    password_writeback: Family<Labels, Counter>,
    tls_expiry: Family<Labels, Gauge>,
    federation_expiry: Family<Labels, Gauge>,
    report_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    report_held: Family<Labels, Gauge>,
    report_interval: Family<Labels, Gauge>,
}

fn signin_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl TenantMetrics {
    pub fn register(registry: &mut Registry) -> TenantMetrics {
        let m = TenantMetrics {
            http: Family::default(),
            signins: Family::default(),
            signin_duration: Family::new_with_constructor(signin_histogram as fn() -> Histogram),
            lockouts: Counter::default(),
            pta_requests: Family::default(),
            pta_agents_online: Gauge::default(),
            pta_domains: Gauge::default(),
            password_writeback: Family::default(),
            tls_expiry: Family::default(),
            federation_expiry: Family::default(),
            report_success: Family::default(),
            report_held: Family::default(),
            report_interval: Family::default(),
        };
        registry.register(
            "idbridge_http_requests",
            "HTTP requests by route (the path's pattern, never its values) and status",
            m.http.clone(),
        );
        registry.register("idbridge_signin", "Sign-ins by method and outcome", m.signins.clone());
        registry.register_with_unit(
            "idbridge_signin_duration",
            "Time to check a sign-in's credentials, by method",
            Unit::Seconds,
            m.signin_duration.clone(),
        );
        registry.register("idbridge_lockouts", "Sign-ins refused by smart lockout", m.lockouts.clone());
        registry.register(
            "idbridge_pta_requests",
            "Pass-through validations by outcome (as idbridge_signin's: success, wrong_password, refused, no_agent, error)",
            m.pta_requests.clone(),
        );
        registry.register(
            "idbridge_pta_agents_online",
            "Pass-through agents that polled in the last minute",
            m.pta_agents_online.clone(),
        );
        registry.register(
            "idbridge_pta_domains",
            "Domains that sign in by pass-through authentication",
            m.pta_domains.clone(),
        );
        registry.register(
            "idbridge_password_writeback",
            "Passwords written back on-premises, by kind (change, reset) and outcome (changed, or the refusal: no-agent, agent-timeout, directory-unreachable, too-short, …)",
            m.password_writeback.clone(),
        );
        registry.register_with_unit(
            "idbridge_tls_certificate_expiry_timestamp",
            "When the tenant's TLS certificate expires (Unix time; absent without TLS)",
            Unit::Seconds,
            m.tls_expiry.clone(),
        );
        registry.register_with_unit(
            "idbridge_federation_certificate_expiry_timestamp",
            "When the first of a federated domain's SAML signing certificates expires (Unix time)",
            Unit::Seconds,
            m.federation_expiry.clone(),
        );
        registry.register_with_unit(
            "idbridge_sync_report_last_success_timestamp",
            "From the sync daemons' reports: when a connector's cycle last succeeded (Unix time; 0: never)",
            Unit::Seconds,
            m.report_success.clone(),
        );
        registry.register(
            "idbridge_sync_report_deletions_held",
            "From the sync daemons' reports: deletions the threshold holds back",
            m.report_held.clone(),
        );
        registry.register_with_unit(
            "idbridge_sync_report_interval",
            "From the sync daemons' reports: the daemon's pause between cycles",
            Unit::Seconds,
            m.report_interval.clone(),
        );
        m
    }

    /// A connector's state as its latest reports tell it.
    pub fn set_sync_report(&self, connector: &str, last_success: Option<f64>, held: u64, interval_secs: u64) {
        let l = labels([("connector", connector)]);
        self.report_success.get_or_create(&l).set(last_success.unwrap_or(0.0));
        self.report_held.get_or_create(&l).set(i64::try_from(held).unwrap_or(i64::MAX));
        self.report_interval.get_or_create(&l).set(i64::try_from(interval_secs).unwrap_or(i64::MAX));
    }

    pub fn set_pta_domains(&self, n: usize) {
        self.pta_domains.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_tls_certificate_expiry(&self, unix_secs: u64) {
        self.tls_expiry.get_or_create(&Vec::new()).set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
    }

    /// A federated domain's identity provider signs with certificates that expire at `unix_secs` (the earliest).
    pub fn set_federation_certificate_expiry(&self, domain: &str, unix_secs: u64) {
        self.federation_expiry
            .get_or_create(&labels([("domain", domain)]))
            .set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
    }

    pub fn http(&self, route: &str, status: u16) {
        self.http.get_or_create(&labels([("route", route), ("status", &status.to_string())])).inc();
    }

    /// A sign-in; `seconds`: how long checking its credentials took, when the tenant checked them.
    pub fn signin(&self, method: SignInMethod, outcome: SignInOutcome, seconds: Option<f64>) {
        self.signins.get_or_create(&labels([("method", method.as_str()), ("outcome", outcome.as_str())])).inc();
        if let Some(seconds) = seconds {
            self.signin_duration.get_or_create(&labels([("method", method.as_str())])).observe(seconds);
        }
        if outcome == SignInOutcome::Locked {
            self.lockouts.inc();
        }
    }

    /// A password writeback attempt: `kind` change or reset, `outcome`
    /// changed or the refusal's audit word.
    pub fn password_writeback(&self, kind: &str, outcome: &str) {
        self.password_writeback.get_or_create(&labels([("kind", kind), ("outcome", outcome)])).inc();
    }

    pub fn pta_request(&self, outcome: &str) {
        self.pta_requests.get_or_create(&labels([("outcome", outcome)])).inc();
    }

    pub fn set_pta_agents_online(&self, n: usize) {
        self.pta_agents_online.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
