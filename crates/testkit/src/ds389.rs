//! A throwaway 389 Directory Server: created with `dscreate` with every path
//! inside a temp dir (lib389 reads its path defaults from `$PREFIX`, so a
//! copy of them points config, database, logs and sockets there), on a free
//! loopback port.
//!
//! `dscreate` starts the server once to create the backend, before anything
//! can restrict it to loopback: it runs in a network namespace of its own
//! (`unshare -n`), so that start is unreachable from outside. The server the
//! tests use is then started by us, listening on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{
    TempDir, TestkitError, free_port, io_err, ldapmodify, listens_on, require_tool, run, stop_child, wait_until,
    write_password_file,
};

pub const BASE_DN: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=Directory Manager";
/// 389 wants at least eight characters.
pub const ADMIN_PASSWORD: &str = "Directory_Manager_Password";
const INSTANCE: &str = "idbridge";

#[derive(Debug, Clone)]
pub struct Ds389Options {
    /// Enable the Retro Changelog and Content Synchronization plugins, so
    /// the server offers RFC 4533 syncrepl (off: it offers no change tracking).
    pub content_sync: bool,
    /// LDIF imported offline (`ldif2db`) before start, besides the base
    /// entries (dc=example,dc=org, ou=people, ou=groups).
    pub ldif: Option<PathBuf>,
}

impl Default for Ds389Options {
    fn default() -> Self {
        Ds389Options { content_sync: true, ldif: None }
    }
}

/// A running 389-ds; stopped and removed on drop.
#[derive(Debug)]
pub struct Ds389 {
    dir: TempDir,
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

impl Ds389 {
    pub fn start(options: Ds389Options) -> Result<Ds389, TestkitError> {
        require_tool("/usr/sbin/dscreate", "389-ds-base")?;
        require_tool("/usr/sbin/ns-slapd", "389-ds-base")?;
        require_tool("/usr/bin/unshare", "util-linux")?;
        require_tool("ldapmodify", "ldap-utils")?;
        let dir = TempDir::new("389ds")?;
        let port = free_port()?;
        create_instance(dir.path(), port)?;
        let config = config_dir(dir.path());
        configure(&config.join("dse.ldif"), &options)?;
        let base = dir.join("base.ldif");
        let mut ldif = BASE_LDIF.to_string();
        if let Some(extra) = &options.ldif {
            ldif.push_str(&std::fs::read_to_string(extra).map_err(io_err("reading the LDIF to import"))?);
        }
        std::fs::write(&base, ldif).map_err(io_err("writing base.ldif"))?;
        run(
            Command::new("/usr/sbin/ns-slapd")
                .arg("ldif2db")
                .arg("-D")
                .arg(&config)
                .args(["-n", "userroot", "-i"])
                .arg(&base),
            None,
        )?;
        let mut ds = Ds389 { dir, child: None, port, url: format!("ldap://127.0.0.1:{port}") };
        ds.launch()?;
        Ok(ds)
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let log = std::fs::File::create(self.dir.join("ns-slapd.log")).map_err(io_err("creating ns-slapd.log"))?;
        let child = Command::new("/usr/sbin/ns-slapd")
            .arg("-D")
            .arg(config_dir(self.dir.path()))
            .arg("-i")
            .arg(self.dir.join("ns-slapd.pid"))
            // A debug level keeps it in the foreground, a child of ours.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err("starting ns-slapd"))?;
        let pid = child.id();
        self.child = Some(child);
        let url = self.url.clone();
        let port = self.port;
        let up = wait_until(Duration::from_secs(60), || {
            if self.exited() {
                return true;
            }
            listens_on(pid, port)
                && Command::new("ldapsearch")
                    .args(["-x", "-H", &url, "-b", "", "-s", "base", "vendorName"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        if !up || self.exited() {
            let mut log = std::fs::read_to_string(self.dir.join("ns-slapd.log")).unwrap_or_default();
            log.push_str(&std::fs::read_to_string(log_dir(self.dir.path()).join("errors")).unwrap_or_default());
            return Err(TestkitError::Startup { what: "389-ds (ns-slapd)".into(), seconds: 60, log });
        }
        Ok(())
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|status| status.is_some()))
    }

    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }

    /// Applies LDIF change records (or plain entries, added) as the admin.
    pub fn modify(&self, ldif: &str) -> Result<(), TestkitError> {
        ldapmodify(&self.url, ADMIN_DN, ADMIN_PASSWORD, None, ldif)
    }

    /// Sets a user's password as an administrator would over plain LDAP
    /// (389 refuses the Password Modify operation without TLS): a replace
    /// of userPassword in clear, which the server stores hashed with its
    /// default scheme.
    pub fn set_password(&self, dn: &str, password: &str) -> Result<(), TestkitError> {
        self.modify(&format!("dn: {dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: {password}\n-\n\n"))
    }

    /// Stops the server (keeping its data) and starts it again.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.launch()
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(20));
        }
    }
}

impl crate::harness::LdapServer for Ds389 {
    fn url(&self) -> &str {
        &self.url
    }
    fn admin_dn(&self) -> &str {
        ADMIN_DN
    }
    fn base_dn(&self) -> &str {
        BASE_DN
    }
    fn password_file(&self) -> Result<PathBuf, TestkitError> {
        write_password_file(self.dir.path(), ADMIN_PASSWORD)
    }
}

impl Drop for Ds389 {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_dir(root: &Path) -> PathBuf {
    root.join(format!("etc/dirsrv/slapd-{INSTANCE}"))
}

fn log_dir(root: &Path) -> PathBuf {
    root.join(format!("var/log/dirsrv/slapd-{INSTANCE}"))
}

/// Runs `dscreate` with lib389's path defaults moved under `root`.
fn create_instance(root: &Path, port: u16) -> Result<(), TestkitError> {
    let defaults = std::fs::read_to_string("/usr/share/dirsrv/inf/defaults.inf")
        .map_err(io_err("reading /usr/share/dirsrv/inf/defaults.inf"))?;
    let r = root.display();
    let mut moved = String::with_capacity(defaults.len() + 1024);
    for line in defaults.lines() {
        let (key, value) = match line.split_once(" = ") {
            Some((k, v)) => (k.trim(), v.trim()),
            None => ("", ""),
        };
        let replaced = match key {
            "with_systemd" => "with_systemd = 0".to_string(),
            "user" | "group" => format!("{key} = root"),
            "sysconf_dir" | "initconfig_dir" | "config_dir" | "local_state_dir" | "run_dir" | "ldapi" | "pid_file"
            | "tmpfiles_d" | "schema_dir" | "cert_dir" | "lock_dir" | "log_dir" | "access_log" | "audit_log"
            | "error_log" | "security_log" | "db_dir" | "db_home_dir" | "backup_dir" | "ldif_dir" | "inst_dir" => {
                format!("{key} = {r}{value}")
            }
            _ => line.to_string(),
        };
        moved.push_str(&replaced);
        moved.push('\n');
    }
    let inf_dir = root.join("prefix/share/dirsrv/inf");
    std::fs::create_dir_all(&inf_dir).map_err(io_err("creating the lib389 prefix"))?;
    std::fs::write(inf_dir.join("defaults.inf"), moved).map_err(io_err("writing defaults.inf"))?;
    // dscreate copies the package's schema and config templates from here.
    for sub in ["schema", "config"] {
        let to = root.join("etc/dirsrv").join(sub);
        std::fs::create_dir_all(&to).map_err(io_err("creating etc/dirsrv"))?;
        let from = Path::new("/etc/dirsrv").join(sub);
        for entry in std::fs::read_dir(&from).map_err(io_err(format!("reading {}", from.display())))? {
            let entry = entry.map_err(io_err("reading /etc/dirsrv"))?;
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(io_err("copying /etc/dirsrv"))?;
        }
    }
    let inf = root.join("instance.inf");
    std::fs::write(
        &inf,
        format!(
            "[general]\nfull_machine_name = localhost\nstart = False\n\
             [slapd]\ninstance_name = {INSTANCE}\nport = {port}\nsecure_port = {secure}\nroot_dn = {ADMIN_DN}\n\
             root_password = {ADMIN_PASSWORD}\nself_sign_cert = False\n\
             [backend-userroot]\nsuffix = {BASE_DN}\nsample_entries = no\n",
            secure = free_port()?,
        ),
    )
    .map_err(io_err("writing instance.inf"))?;
    run(
        Command::new("/usr/bin/unshare")
            .args(["-n", "sh", "-c", "ip link set lo up && exec /usr/sbin/dscreate from-file \"$0\""])
            .arg(&inf)
            .env("PREFIX", root.join("prefix")),
        None,
    )?;
    Ok(())
}

/// Before the first start of our own: loopback only, and the plugins.
fn configure(dse: &Path, options: &Ds389Options) -> Result<(), TestkitError> {
    let text = std::fs::read_to_string(dse).map_err(io_err("reading dse.ldif"))?;
    let mut out = String::with_capacity(text.len() + 64);
    let mut entry = String::new();
    for line in text.lines() {
        if let Some(dn) = line.strip_prefix("dn: ") {
            entry = dn.to_ascii_lowercase();
        }
        if entry == "cn=config" && line.starts_with("nsslapd-port:") {
            out.push_str(line);
            out.push_str("\nnsslapd-listenhost: 127.0.0.1\n");
            continue;
        }
        let plugin = entry == "cn=retro changelog plugin,cn=plugins,cn=config"
            || entry == "cn=content synchronization,cn=plugins,cn=config";
        if plugin && line.starts_with("nsslapd-pluginEnabled:") {
            out.push_str(if options.content_sync {
                "nsslapd-pluginEnabled: on\n"
            } else {
                "nsslapd-pluginEnabled: off\n"
            });
            if entry.starts_with("cn=retro changelog") {
                // Content synchronization finds changed entries by this (what `dsconf` sets up).
                out.push_str("nsslapd-attribute: nsuniqueid:targetUniqueId\n");
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !out.contains("nsslapd-listenhost: 127.0.0.1") {
        return Err(TestkitError::Other("dse.ldif has no nsslapd-port in cn=config".into()));
    }
    std::fs::write(dse, out).map_err(io_err("writing dse.ldif"))
}

const BASE_LDIF: &str = "dn: dc=example,dc=org
objectClass: top
objectClass: domain
dc: example

dn: ou=people,dc=example,dc=org
objectClass: top
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: top
objectClass: organizationalUnit
ou: groups

";
