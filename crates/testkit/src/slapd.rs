//! A throwaway OpenLDAP slapd: cn=config and an mdb database with syncprov,
//! on a free loopback port, optionally with TLS (StartTLS/LDAPS) from a test CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{
    TempDir, TestkitError, free_port, io_err, ldapmodify, require_tool, run, stop_child, wait_until,
    write_password_file,
};
use crate::tls::TestCa;

pub const BASE_DN: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";

#[derive(Debug, Clone)]
pub struct SlapdOptions {
    /// syncprov session log size; `None` forces the present phase for deltas.
    pub session_log: Option<u32>,
    /// Serve TLS with certificates from a test CA (StartTLS on ldap://, and ldaps:// on a second port).
    pub tls: bool,
    /// LDIF loaded with `slapadd -q` before start (fast bulk loads).
    pub bulk_ldif: Option<PathBuf>,
    /// The password-policy overlay with a default policy ([`PPOLICY_DN`]):
    /// at least 8 characters, the last 3 passwords kept in history, no
    /// minimum age (tests raise it with [`Slapd::modify`]).
    pub ppolicy: bool,
}

impl Default for SlapdOptions {
    fn default() -> Self {
        SlapdOptions { session_log: Some(10_000), tls: false, bulk_ldif: None, ppolicy: false }
    }
}

/// The default password policy's entry (with [`SlapdOptions::ppolicy`]).
pub const PPOLICY_DN: &str = "cn=default,ou=policies,dc=example,dc=org";

const PPOLICY_LDIF: &str = "dn: ou=policies,dc=example,dc=org
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,dc=example,dc=org
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdMinLength: 8
pwdCheckQuality: 2
pwdInHistory: 3
pwdMinAge: 0
pwdAllowUserChange: TRUE

";

/// A running slapd; stopped and removed on drop.
#[derive(Debug)]
pub struct Slapd {
    dir: TempDir,
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    /// `ldaps://` URL when started with TLS.
    pub ldaps_url: Option<String>,
    pub ca: Option<TestCa>,
    options: SlapdOptions,
    /// Random per server: a test that reaches another test's server (a port
    /// handed out twice under load) is refused, never silently answered.
    admin_password: String,
}

impl Slapd {
    pub fn start(options: SlapdOptions) -> Result<Slapd, TestkitError> {
        require_tool("/usr/sbin/slapd", "slapd")?;
        require_tool("slapadd", "slapd")?;
        require_tool("ldapmodify", "ldap-utils")?;
        let dir = TempDir::new("slapd")?;
        let ca = if options.tls { Some(TestCa::generate()?) } else { None };
        for sub in ["slapd.d", "data"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io_err("creating slapd dirs"))?;
        }
        let admin_password = random_password();
        let config = config_ldif(dir.path(), &options, ca.as_ref(), &admin_password);
        let config_path = dir.join("config.ldif");
        std::fs::write(&config_path, config).map_err(io_err("writing config.ldif"))?;
        let slapd_d = dir.join("slapd.d").display().to_string();
        run(Command::new("slapadd").args(["-n", "0", "-F", &slapd_d, "-l"]).arg(&config_path), None)?;
        let data_path = dir.join("base.ldif");
        std::fs::write(&data_path, BASE_LDIF).map_err(io_err("writing base.ldif"))?;
        run(Command::new("slapadd").args(["-q", "-w", "-F", &slapd_d, "-b", BASE_DN, "-l"]).arg(&data_path), None)?;
        if let Some(bulk) = &options.bulk_ldif {
            run(Command::new("slapadd").args(["-q", "-w", "-F", &slapd_d, "-b", BASE_DN, "-l"]).arg(bulk), None)?;
        }
        if options.ppolicy {
            let policy_path = dir.join("policy.ldif");
            std::fs::write(&policy_path, PPOLICY_LDIF).map_err(io_err("writing policy.ldif"))?;
            run(
                Command::new("slapadd").args(["-q", "-w", "-F", &slapd_d, "-b", BASE_DN, "-l"]).arg(&policy_path),
                None,
            )?;
        }
        let port = free_port()?;
        let ldaps_port = if options.tls { Some(free_port()?) } else { None };
        let mut slapd = Slapd {
            dir,
            child: None,
            port,
            url: format!("ldap://127.0.0.1:{port}"),
            ldaps_url: ldaps_port.map(|p| format!("ldaps://127.0.0.1:{p}")),
            ca,
            options,
            admin_password,
        };
        // A free port can be taken by another test's server before slapd binds
        // it; slapd then exits or serves without that listener, and a new
        // port is tried.
        for attempt in 0.. {
            match slapd.launch() {
                Err(TestkitError::Startup { .. }) if attempt < 5 && slapd.lost_a_port() => {
                    if let Some(mut c) = slapd.child.take() {
                        stop_child(&mut c, Duration::from_secs(5));
                    }
                    slapd.port = free_port()?;
                    slapd.url = format!("ldap://127.0.0.1:{}", slapd.port);
                    if slapd.options.tls {
                        slapd.ldaps_url = Some(format!("ldaps://127.0.0.1:{}", free_port()?));
                    }
                }
                other => return other.map(|()| slapd),
            }
        }
        Ok(slapd)
    }

    /// Whether the server process has ended (it could not bind its port).
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|status| status.is_some()))
    }

    /// Whether this server listens on each of its TCP ports itself.
    fn owns_its_ports(&self) -> bool {
        let Some(child) = &self.child else { return false };
        let ldaps_port = self.ldaps_url.as_deref().and_then(|u| u.rsplit(':').next()).and_then(|p| p.parse().ok());
        crate::process::listens_on(child.id(), self.port)
            && ldaps_port.is_none_or(|p| crate::process::listens_on(child.id(), p))
    }

    /// Startup failed because another process holds one of the ports.
    fn lost_a_port(&mut self) -> bool {
        self.exited() || !self.owns_its_ports()
    }

    /// A Unix socket in this server's own directory: readiness is checked
    /// there, so a server of another test on the same TCP port (a lost
    /// race for a free port) is never mistaken for this one — slapd binds
    /// every listener before it serves any, or exits.
    fn ldapi_url(&self) -> String {
        let path = self.dir.join("ldapi").display().to_string();
        let encoded: String = path
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("ldapi://{encoded}")
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let ldapi = self.ldapi_url();
        let mut listen = format!("ldap://127.0.0.1:{}/ {ldapi}", self.port);
        if let Some(u) = &self.ldaps_url {
            listen.push_str(&format!(" {u}/"));
        }
        let log = std::fs::File::create(self.dir.join("slapd.log")).map_err(io_err("creating slapd.log"))?;
        let child = Command::new("/usr/sbin/slapd")
            .args(["-h", &listen, "-F"])
            .arg(self.dir.join("slapd.d"))
            .args(["-d", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err("starting slapd"))?;
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(20), || {
            if self.exited() {
                return true;
            }
            Command::new("ldapsearch")
                .args(["-x", "-H", &ldapi, "-b", "", "-s", "base", "namingContexts"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        // Serving on its own socket, slapd has bound and listens on every
        // port — unless another server listens there (seen under load: the
        // test then talked to a foreign server).
        if !up || self.exited() || !self.owns_its_ports() {
            let log = std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default();
            return Err(TestkitError::Startup { what: "slapd".into(), seconds: 20, log });
        }
        Ok(())
    }

    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }

    pub fn admin_dn(&self) -> &'static str {
        ADMIN_DN
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Writes the admin password to a file (for `--password-file`).
    pub fn password_file(&self) -> Result<PathBuf, TestkitError> {
        write_password_file(self.dir.path(), &self.admin_password)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An OpenLDAP command-line tool bound to this server as the admin.
    fn tool_as_admin(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command.args(["-x", "-H", &self.url, "-D", ADMIN_DN, "-w", &self.admin_password]);
        command
    }

    /// Applies LDIF change records (or plain entries, added) as the admin.
    pub fn modify(&self, ldif: &str) -> Result<(), TestkitError> {
        ldapmodify(&self.url, ADMIN_DN, &self.admin_password, None, ldif)
    }

    /// Sets a user's password the way an administrator would (`ldappasswd`,
    /// the Password Modify extended operation): the server stores it hashed.
    pub fn set_password(&self, dn: &str, password: &str) -> Result<(), TestkitError> {
        run(self.tool_as_admin("ldappasswd").args(["-s", password, dn]), None).map(|_| ())
    }

    /// Like [`Slapd::modify`] with the ManageDsaIT control, so referral
    /// objects are written as entries instead of being followed.
    pub fn modify_manage_dsa_it(&self, ldif: &str) -> Result<(), TestkitError> {
        run(self.tool_as_admin("ldapmodify").args(["-a", "-M"]), Some(ldif.as_bytes())).map(|_| ())
    }

    /// Operations the server is executing on all connections (from its
    /// monitor database), not counting the search that asks: a persistent
    /// search that a client stopped waiting for but never abandoned stays here
    /// (syncprov counts it as a finished search, but not its connection).
    pub fn operations_executing(&self) -> Result<u64, TestkitError> {
        let out = run(
            self.tool_as_admin("ldapsearch").args([
                "-LLL",
                "-b",
                "cn=Connections,cn=Monitor",
                "(objectClass=monitorConnection)",
                "monitorConnectionOpsExecuting",
            ]),
            None,
        )?;
        let mut executing = 0u64;
        for value in out.lines().filter_map(|l| l.strip_prefix("monitorConnectionOpsExecuting: ")) {
            executing += value
                .trim()
                .parse::<u64>()
                .map_err(|e| TestkitError::Other(format!("the monitor's answer {value:?}: {e}")))?;
        }
        Ok(executing.saturating_sub(1))
    }

    /// Stops the server (keeping its data) and starts it again.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        self.launch()
    }

    /// Stops the server for good (its port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.freeze(false);
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: the kernel still
    /// accepts connections, but nothing answers — a hung server.
    pub fn freeze(&self, frozen: bool) -> Result<(), TestkitError> {
        let Some(child) = &self.child else { return Err(TestkitError::Other("slapd is not running".into())) };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        run(Command::new("kill").args([signal, &child.id().to_string()]), None)?;
        // The signal is sent, not yet acted on: under load a thread of slapd
        // may still answer a request (a test then met a server it thought
        // frozen). Wait until every thread is stopped (or running again).
        let pid = child.id();
        let settled = wait_until(Duration::from_secs(20), || {
            // A process gone (reaped) is not running: nothing to wait for when continuing.
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return !frozen };
            tasks.flatten().all(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // The state follows the command name, which ends with ')'.
                let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                match state {
                    Some("T" | "t") => frozen,
                    Some(_) => !frozen,
                    None => false,
                }
            })
        });
        if settled {
            Ok(())
        } else {
            Err(TestkitError::Other(format!(
                "slapd {pid} did not {} within 20 s",
                if frozen { "stop" } else { "continue" }
            )))
        }
    }

    pub fn options(&self) -> &SlapdOptions {
        &self.options
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

const BASE_LDIF: &str = "dn: dc=example,dc=org
objectClass: top
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

";

/// "secret-" and 16 random hex digits.
fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("secret-{:016x}", h.finish())
}

fn config_ldif(dir: &Path, options: &SlapdOptions, ca: Option<&TestCa>, admin_password: &str) -> String {
    let d = dir.display();
    let tls = match ca {
        Some(ca) => format!(
            "olcTLSCACertificateFile: {}\nolcTLSCertificateFile: {}\nolcTLSCertificateKeyFile: {}\n",
            ca.ca_cert.display(),
            ca.server_cert.display(),
            ca.server_key.display()
        ),
        None => String::new(),
    };
    let session_log = match options.session_log {
        Some(n) => format!("olcSpSessionLog: {n}\n"),
        None => String::new(),
    };
    let (ppolicy_module, ppolicy_overlay) = if options.ppolicy {
        (
            "olcModuleLoad: ppolicy\n",
            format!(
                "
dn: olcOverlay={{1}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{1}}ppolicy
olcPPolicyDefault: {PPOLICY_DN}
"
            ),
        )
    } else {
        ("", String::new())
    };
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid
olcArgsFile: {d}/slapd.args
{tls}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: syncprov
{ppolicy_module}
dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/nis.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif

dn: cn=samba-nt-hash,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: samba-nt-hash
olcAttributeTypes: ( 1.3.6.1.4.1.7165.2.1.25 NAME 'sambaNTPassword' DESC 'MD4 hash of the unicode password' EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{{32}} SINGLE-VALUE )
olcAttributeTypes: ( 1.3.6.1.4.1.7165.2.1.20 NAME 'sambaSID' DESC 'Security ID' EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{{64}} SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.7165.2.2.6 NAME 'sambaSamAccount' SUP top AUXILIARY DESC 'The part of the Samba schema that holds NT hashes' MUST ( uid $ sambaSID ) MAY ( sambaNTPassword ) )

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: unlimited

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: cn=admin,cn=config

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcDbDirectory: {d}/data
olcRootDN: {ADMIN_DN}
olcRootPW: {admin_password}
olcDbMaxSize: 8589934592
olcDbIndex: objectClass eq
olcDbIndex: uid,cn,mail,member eq
olcDbIndex: entryCSN,entryUUID eq
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read

dn: olcOverlay={{0}}syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{0}}syncprov
olcSpCheckpoint: 100 10
{session_log}{ppolicy_overlay}
dn: olcDatabase={{2}}monitor,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{2}}monitor
olcAccess: {{0}}to * by dn.exact={ADMIN_DN} read by * none
"
    )
}
