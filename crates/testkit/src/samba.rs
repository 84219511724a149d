//! A throwaway Samba AD domain controller (realm EXAMPLE.TEST) on 127.0.0.1.
//!
//! Samba's LDAP ports are fixed (389/636), so one DC runs at a time on this
//! address: `SambaDc` holds an exclusive lock file while it lives, and tests
//! using it are serialised (also across processes, as nextest runs them).
//! Provisioning takes seconds, so it is done once into a template that each
//! DC copies (only `etc/smb.conf` holds absolute paths).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{
    TempDir, TestkitError, io_err, ldapmodify, require_tool, run, stop_child, wait_until, write_password_file,
};
use crate::tls::TestCa;

pub const REALM: &str = "EXAMPLE.TEST";
pub const BASE_DN: &str = "DC=example,DC=test";
pub const ADMIN_UPN: &str = "Administrator@example.test";
pub const ADMIN_PASSWORD: &str = "Passw0rd.Passw0rd";
const TEMPLATE_VERSION: &str = "v1";

#[derive(Debug)]
pub struct SambaDc {
    dir: TempDir,
    child: Option<Child>,
    _lock: File,
    pub url: String,
    pub ldaps_url: String,
    pub ca: TestCa,
}

fn lock_file() -> Result<File, TestkitError> {
    let path = std::env::temp_dir().join("idbridge-samba.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    f.lock().map_err(io_err("locking the Samba lock file"))?;
    Ok(f)
}

fn template_dir() -> PathBuf {
    std::env::temp_dir().join(format!("idbridge-samba-template-{TEMPLATE_VERSION}"))
}

/// Provisions the template domain if it is not there yet (caller holds the lock).
fn ensure_template() -> Result<PathBuf, TestkitError> {
    let template = template_dir();
    if template.join("etc/smb.conf").exists() && template.join("private/sam.ldb").exists() {
        return Ok(template);
    }
    let partial = template.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(partial.join("run")).map_err(io_err("creating the template dir"))?;
    let empty = partial.join("empty.conf");
    std::fs::write(&empty, "").map_err(io_err("writing empty.conf"))?;
    let p = partial.display().to_string();
    run(
        Command::new("samba-tool")
            .args(["domain", "provision", "-s"])
            .arg(&empty)
            .arg(format!("--targetdir={p}"))
            .args([
                "--use-rfc2307",
                &format!("--realm={REALM}"),
                "--domain=EXAMPLE",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--host-name=dc1",
            ])
            .arg(format!("--adminpass={ADMIN_PASSWORD}"))
            .args(["--option=interfaces = 127.0.0.1", "--option=bind interfaces only = yes"]),
        None,
    )?;
    let conf_path = partial.join("etc/smb.conf");
    let conf = std::fs::read_to_string(&conf_path).map_err(io_err("reading smb.conf"))?;
    let extra = format!(
        "[global]\n\tserver services = rpc, ldap, cldap, kdc, drepl\n\tldap server require strong auth = no\n\tpid directory = {p}/run\n\tncalrpc dir = {p}/run/ncalrpc\n\twinbindd socket directory = {p}/run/winbindd\n\tntp signd socket directory = {p}/run/ntp_signd\n\tlog file = {p}/log.%m\n\ttls enabled = yes\n\ttls keyfile = {p}/tls/key.pem\n\ttls certfile = {p}/tls/cert.pem\n\ttls cafile = {p}/tls/ca.pem\n"
    );
    let conf: String =
        conf.lines().filter(|l| !l.trim_start().starts_with("server services")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&conf_path, conf.replacen("[global]\n", &extra, 1)).map_err(io_err("writing smb.conf"))?;
    run(
        Command::new("samba-tool")
            .args(["domain", "passwordsettings", "set", "-H"])
            .arg(partial.join("private/sam.ldb"))
            .args([
                "--complexity=off",
                "--history-length=0",
                "--min-pwd-age=0",
                "--max-pwd-age=0",
                "--min-pwd-length=1",
            ]),
        None,
    )?;
    let _ = std::fs::remove_dir_all(&template);
    std::fs::rename(&partial, &template).map_err(io_err("moving the template into place"))?;
    Ok(template)
}

impl SambaDc {
    pub fn start() -> Result<SambaDc, TestkitError> {
        require_tool("/usr/sbin/samba", "samba samba-ad-dc")?;
        require_tool("samba-tool", "samba")?;
        require_tool("ldapmodify", "ldap-utils")?;
        let lock = lock_file()?;
        if std::net::TcpListener::bind("127.0.0.1:389").is_err() {
            return Err(TestkitError::Other(
                "127.0.0.1:389 is in use (a system slapd or samba service?): stop it, Samba's LDAP port cannot be moved".into(),
            ));
        }
        let template = ensure_template()?;
        let dir = TempDir::new("samba")?;
        let dc = dir.join("dc");
        run(Command::new("cp").arg("-a").arg(&template).arg(&dc), None)?;
        let conf_path = dc.join("etc/smb.conf");
        let conf = std::fs::read_to_string(&conf_path).map_err(io_err("reading smb.conf"))?;
        let template_partial = template.with_extension("partial").display().to_string();
        let conf = conf
            .replace(&template_partial, &dc.display().to_string())
            .replace(&template.display().to_string(), &dc.display().to_string());
        // A throwaway DC need not fsync every write (Samba's own selftest does the
        // same); without this, one user add over LDAP takes about half a second.
        let conf = conf.replacen("[global]\n", "[global]\n\tldb:nosync = true\n", 1);
        std::fs::write(&conf_path, conf).map_err(io_err("writing smb.conf"))?;
        let ca = TestCa::generate()?;
        let tls_dir = dc.join("tls");
        std::fs::create_dir_all(&tls_dir).map_err(io_err("creating tls dir"))?;
        for (from, to) in [(&ca.server_key, "key.pem"), (&ca.server_cert, "cert.pem"), (&ca.ca_cert, "ca.pem")] {
            std::fs::copy(from, tls_dir.join(to)).map_err(io_err("copying TLS files"))?;
        }
        std::fs::remove_dir_all(dc.join("run")).ok();
        std::fs::create_dir_all(dc.join("run")).map_err(io_err("creating run dir"))?;
        let mut me = SambaDc {
            dir,
            child: None,
            _lock: lock,
            url: "ldap://127.0.0.1".into(),
            ldaps_url: "ldaps://127.0.0.1".into(),
            ca,
        };
        me.launch()?;
        Ok(me)
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let dc = self.dc_dir();
        let log = File::create(dc.join("samba.out")).map_err(io_err("creating samba.out"))?;
        let log2 = log.try_clone().map_err(io_err("cloning log handle"))?;
        let child = Command::new("/usr/sbin/samba")
            .args(["-i", "-M", "single", "-s"])
            .arg(dc.join("etc/smb.conf"))
            .env("KRB5_CONFIG", dc.join("private/krb5.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err("starting samba"))?;
        self.child = Some(child);
        let url = self.url.clone();
        let up = wait_until(Duration::from_secs(90), || {
            Command::new("ldapsearch")
                .args(["-x", "-H", &url, "-D", ADMIN_UPN, "-w", ADMIN_PASSWORD, "-b", BASE_DN, "-s", "base", "dn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !up {
            let log = std::fs::read_to_string(dc.join("samba.out")).unwrap_or_default();
            return Err(TestkitError::Startup { what: "samba".into(), seconds: 90, log });
        }
        Ok(())
    }

    fn dc_dir(&self) -> PathBuf {
        self.dir.join("dc")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }

    pub fn admin_upn(&self) -> &'static str {
        ADMIN_UPN
    }

    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }

    pub fn password_file(&self) -> Result<PathBuf, TestkitError> {
        write_password_file(self.dir.path(), ADMIN_PASSWORD)
    }

    /// Applies LDIF (entries are added) as Administrator over plain LDAP.
    pub fn modify(&self, ldif: &str) -> Result<(), TestkitError> {
        self.modify_as(ADMIN_UPN, ADMIN_PASSWORD, ldif)
    }

    pub fn modify_as(&self, bind: &str, password: &str, ldif: &str) -> Result<(), TestkitError> {
        ldapmodify(&self.url, bind, password, None, ldif)
    }

    /// Applies LDIF over LDAPS (needed for unicodePwd).
    pub fn modify_tls(&self, ldif: &str) -> Result<(), TestkitError> {
        ldapmodify(&self.ldaps_url, ADMIN_UPN, ADMIN_PASSWORD, Some(&self.ca.ca_cert), ldif)
    }

    /// Runs `samba-tool` against this DC's database.
    pub fn samba_tool(&self, args: &[&str]) -> Result<String, TestkitError> {
        let dc = self.dc_dir();
        run(
            Command::new("samba-tool")
                .args(args)
                .arg("-s")
                .arg(dc.join("etc/smb.conf"))
                .arg("-H")
                .arg(dc.join("private/sam.ldb")),
            None,
        )
    }
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}
