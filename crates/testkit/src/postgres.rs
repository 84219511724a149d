//! A throwaway PostgreSQL 15 cluster (`initdb` + `pg_ctl`) in a temporary
//! directory on a free loopback port, with a password-protected superuser
//! and an empty database. PostgreSQL refuses to run as root: when the tests
//! run as root, the cluster runs as the `postgres` user the Debian package
//! creates. Stopped (immediately) and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{TempDir, TestkitError, free_port, io_err, require_tool, run};
use crate::tls::TestCa;

/// Where Debian's postgresql-15 package puts the server programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";
pub const USER: &str = "idbridge";
pub const PASSWORD: &str = "pg-secret-ü";
pub const DATABASE: &str = "idbridge";

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    pub port: u16,
    /// `postgres://idbridge@127.0.0.1:PORT/idbridge` (the password is in [`Postgres::password_file`]).
    pub url: String,
    /// With TLS on: the CA that signed the server's certificate (for 127.0.0.1 and localhost).
    pub ca: Option<TestCa>,
    running: bool,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root.
fn server_command(program: &str) -> Command {
    let path = Path::new(BIN).join(program);
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

impl Postgres {
    pub fn start() -> Result<Postgres, TestkitError> {
        Self::start_with(false)
    }

    /// With `tls`, the server also speaks TLS with a certificate from a new [`TestCa`].
    pub fn start_with(tls: bool) -> Result<Postgres, TestkitError> {
        require_tool(&format!("{BIN}/pg_ctl"), "postgresql-15")?;
        require_tool("psql", "postgresql-client-15")?;
        let dir = TempDir::new("postgres")?;
        let password_file = dir.join("superuser.password");
        std::fs::write(&password_file, PASSWORD).map_err(io_err("writing the superuser password"))?;
        let ca = if tls {
            let ca = TestCa::generate()?;
            std::fs::copy(&ca.server_cert, dir.join("server.pem")).map_err(io_err("copying the server certificate"))?;
            std::fs::copy(&ca.server_key, dir.join("server.key")).map_err(io_err("copying the server key"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err("protecting the server key"))?;
            }
            Some(ca)
        } else {
            None
        };
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()), None)?;
        }
        let data = dir.join("data");
        run(
            server_command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"])
                .arg(format!("--pwfile={}", password_file.display())),
            None,
        )?;
        let port = free_port()?;
        let mut pg =
            Postgres { dir, port, url: format!("postgres://{USER}@127.0.0.1:{port}/{DATABASE}"), ca, running: false };
        pg.restart()?;
        pg.psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(pg)
    }

    /// Starts the server again (after [`Postgres::stop`]) on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        if self.running {
            return Ok(());
        }
        let mut options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        if self.ca.is_some() {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                self.dir.join("server.pem").display(),
                self.dir.join("server.key").display()
            ));
        }
        run(
            server_command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            None,
        )?;
        self.running = true;
        Ok(())
    }

    /// The test database as SQL text (`pg_dump`).
    pub fn dump(&self) -> Result<String, TestkitError> {
        run(
            Command::new(Path::new(BIN).join("pg_dump"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, DATABASE])
                .env("PGPASSWORD", PASSWORD),
            None,
        )
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// How a component under test reaches the test database (no TLS, the password given).
    pub fn settings(&self, application_name: &str) -> pgconn::DatabaseSettings {
        pgconn::DatabaseSettings {
            url: self.url.clone(),
            password: Some(PASSWORD.to_string()),
            tls: pgconn::PgTls::Plain,
            timeout: std::time::Duration::from_secs(20),
            application_name: application_name.to_string(),
        }
    }

    /// The server's processes: the postmaster and its children (for CPU accounting).
    pub fn server_pids(&self) -> Vec<u32> {
        let Some(main) = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        pids.extend(crate::bench::children_of(main));
        pids
    }

    /// The superuser's password, in a file (never on a command line).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("superuser.password")
    }

    /// Runs SQL in the test database over TCP with the password; its output (unaligned, no headers).
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        self.psql_in(DATABASE, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> Result<String, TestkitError> {
        run(
            Command::new("psql")
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", USER, "-d", database, "-c", sql])
                .env("PGPASSWORD", PASSWORD),
            None,
        )
    }

    /// Stops the server at once, as a crash would.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        if self.running {
            run(
                server_command("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "-w", "stop"]),
                None,
            )?;
            self.running = false;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
