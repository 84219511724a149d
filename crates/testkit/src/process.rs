//! Temporary directories, free ports and running external tools.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{tool} is not installed ({hint})")]
    Missing { tool: String, hint: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{command} failed ({status}):\n{output}")]
    Command { command: String, status: String, output: String },
    #[error("{what} did not come up within {seconds} s; log:\n{log}")]
    Startup { what: String, seconds: u64, log: String },
    #[error("{0}")]
    Other(String),
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// A directory removed (recursively) on drop, unless IDBRIDGE_KEEP_TEST_DIRS is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir, TestkitError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name =
            format!("idbridge-{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("IDBRIDGE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process that is killed and reaped when dropped, so a test that
/// fails half-way leaves no process of its behind.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, TestkitError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding an ephemeral port"))?;
    l.local_addr().map(|a| a.port()).map_err(io_err("reading the ephemeral port"))
}

/// Whether process `pid` itself holds a listening TCP socket on `port`
/// (IPv4 or IPv6), read from `/proc`. Another test's server may win the race
/// for a port [`free_port`] handed out; a server that answers on the port is
/// then not necessarily the one the test started.
pub fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let local_port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                listening.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| listening.contains(target.to_string_lossy().as_ref()))
    })
}

/// Fails with an install hint when `tool` is not on PATH (or at an absolute path).
pub fn require_tool(tool: &str, package: &str) -> Result<(), TestkitError> {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
    };
    if found {
        Ok(())
    } else {
        Err(TestkitError::Missing {
            tool: tool.into(),
            hint: format!("run scripts/test, or apt-get install {package}"),
        })
    }
}

/// Runs a command to completion, feeding `stdin`; fails with its output.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<String, TestkitError> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {shown}")))?;
    // Feed standard input from another thread while the output is read:
    // a tool that answers as it reads (ldapmodify: one line per entry) would
    // otherwise fill its output pipe and stop reading — a deadlock after
    // ~64 KiB of answers (about 1,150 entries).
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(io_err(format!("waiting for {shown}")))?;
    if let Some(feeder) = feeder {
        match feeder.join() {
            // A tool that stops early closes its input: its own error says why.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Ok(result) => result.map_err(io_err(format!("writing to {shown}")))?,
            Err(_) => return Err(TestkitError::Other(format!("the thread writing to {shown} panicked"))),
        }
    }
    let mut text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Keep the end, where the error is; a bulk load echoes every entry before it.
    if text.len() > 3000 {
        let cut = text.len() - 3000;
        let cut = (cut..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(cut);
        text = format!("…{}", text.get(cut..).unwrap_or_default());
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestkitError::Command { command: shown, status: out.status.to_string(), output: text })
    }
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    if !wait_until(grace, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Writes a password into `dir/admin.pw` (for `--password-file`).
/// Writes `admin.pw` atomically (a temporary file, then a rename): a
/// process reading it while a test asks for it again never sees it empty.
/// (A pass-through agent once started with an empty bind password because
/// a second `password_file()` call truncated the file under it.)
pub fn write_password_file(dir: &Path, password: &str) -> Result<PathBuf, TestkitError> {
    let p = dir.join("admin.pw");
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tmp = dir.join(format!("admin.pw.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, password).map_err(io_err("writing admin.pw"))?;
    std::fs::rename(&tmp, &p).map_err(io_err("moving admin.pw into place"))?;
    Ok(p)
}

/// Applies LDIF with `ldapmodify -a` (plain entries are added), optionally
/// trusting `ca` for an `ldaps://` URL.
pub fn ldapmodify(url: &str, bind: &str, password: &str, ca: Option<&Path>, ldif: &str) -> Result<(), TestkitError> {
    let mut cmd = Command::new("ldapmodify");
    if let Some(ca) = ca {
        cmd.env("LDAPTLS_CACERT", ca);
    }
    run(cmd.args(["-x", "-a", "-H", url, "-D", bind, "-w", password]), Some(ldif.as_bytes())).map(|_| ())
}

/// Starts `idbridge tenant serve` (the binary at `exe`) on a free loopback
/// port with its data in `data`; returns the process and the SCIM base URL it
/// printed. Its standard error keeps being drained so it never blocks.
pub fn spawn_tenant(exe: &Path, data: &Path, extra: &[&str]) -> Result<(std::process::Child, String), TestkitError> {
    let data = data.to_string_lossy();
    spawn_tenant_at(exe, &["--data", &data], extra)
}

/// [`spawn_tenant`] with the tenant's data where `location` says
/// (`--data DIR`, or `--database URL …` for PostgreSQL).
pub fn spawn_tenant_at(
    exe: &Path,
    location: &[&str],
    extra: &[&str],
) -> Result<(std::process::Child, String), TestkitError> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(exe)
        .args(["tenant", "serve"])
        .args(location)
        .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("starting the tenant"))?;
    let stderr = child.stderr.take().ok_or_else(|| TestkitError::Other("the tenant has no stderr".into()))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.split("SCIM API at ").nth(1) {
                    break rest.trim().to_string();
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            _ => {
                let _ = child.kill();
                return Err(TestkitError::Startup { what: "idbridge tenant serve".into(), seconds: 0, log: seen });
            }
        }
    };
    // The rest of its log: to the file IDBRIDGE_TEST_TENANT_LOG names, if any.
    let keep = std::env::var_os("IDBRIDGE_TEST_TENANT_LOG").and_then(|p| std::fs::File::create(p).ok());
    std::thread::spawn(move || {
        let mut keep = keep;
        for line in lines.map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
        }
    });
    Ok((child, base))
}

/// Runs a command to its end: wall time in seconds, peak RSS in KiB (VmHWM,
/// polled), and its standard error. Fails if the command fails.
pub fn measure(cmd: &mut Command) -> Result<(f64, u64, String), TestkitError> {
    let m = measure_run(cmd)?;
    Ok((m.seconds, m.peak_kib, m.stderr))
}

/// What [`measure_run`] saw of one command.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory (VmHWM), polled every 2 ms.
    pub peak_kib: u64,
    /// User + system CPU seconds, as last polled before it ended (within 2 ms of CPU).
    pub cpu_seconds: f64,
    pub stderr: String,
}

/// [`measure`] with the CPU time too. Fails if the command fails.
pub fn measure_run(cmd: &mut Command) -> Result<Measured, TestkitError> {
    use std::io::Read;
    let shown = format!("{cmd:?}");
    let ticks = crate::bench::clock_ticks();
    let start = Instant::now();
    let mut child =
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(io_err(format!("starting {shown}")))?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let (mut peak, mut cpu) = (0, 0.0);
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(ticks_used) = crate::bench::cpu_ticks(pid) {
            cpu = ticks_used / ticks;
        }
        if let Some(s) = child.try_wait().map_err(io_err(format!("waiting for {shown}")))? {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(TestkitError::Command { command: shown, status: status.to_string(), output: text });
    }
    Ok(Measured { seconds: start.elapsed().as_secs_f64(), peak_kib: peak, cpu_seconds: cpu, stderr: text })
}

/// Peak resident memory (VmHWM) of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    vm_hwm_kib(pid)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Registers a public OpenID Connect client in the tenant under `data` (with
/// the `idbridge` binary at `exe`) and returns the authorize URL its sign-ins
/// start at (a fixed PKCE pair; the redirect goes nowhere, only the code in
/// it is looked at).
pub fn public_client_authorize_url(exe: &Path, data: &Path, issuer: &str) -> Result<String, TestkitError> {
    let data = data.to_string_lossy();
    public_client_authorize_url_at(exe, &["--data", &data], issuer)
}

/// [`public_client_authorize_url`] for the tenant at `location`
/// (`--data DIR`, or `--database URL …`).
pub fn public_client_authorize_url_at(exe: &Path, location: &[&str], issuer: &str) -> Result<String, TestkitError> {
    let out = run(
        Command::new(exe).args(["tenant", "client", "add"]).args(location).args([
            "--name",
            "bench",
            "--redirect-uri",
            "http://127.0.0.1:9/cb",
            "--public",
        ]),
        None,
    )?;
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("client_id: "))
        .ok_or_else(|| TestkitError::Other(format!("`tenant client add` printed no client_id: {out}")))?;
    Ok(format!(
        "{issuer}/oauth2/authorize?client_id={id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=openid&state=s&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    ))
}

/// The authenticator-app code (TOTP, RFC 6238) Debian's `oathtool` — an
/// implementation independent of idbridge's — gives for the base32 `secret`
/// at `at_secs` (Unix time).
pub fn oathtool(secret: &str, at_secs: i64) -> Result<String, TestkitError> {
    require_tool("oathtool", "oathtool")?;
    let out = run(Command::new("oathtool").args(["--totp", "-b", "-N", &format!("@{at_secs}"), secret]), None)?;
    Ok(out.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // pid 1 is not this test; a closed port is nobody's.
        assert!(!listens_on(1, port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }
}
