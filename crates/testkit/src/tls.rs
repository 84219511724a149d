//! A throwaway certificate authority and a server certificate for 127.0.0.1
//! and localhost, made with the openssl command.

use std::path::PathBuf;
use std::process::Command;

use crate::process::{TempDir, TestkitError, require_tool, run};

#[derive(Debug)]
pub struct TestCa {
    _dir: TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn generate() -> Result<TestCa, TestkitError> {
        require_tool("openssl", "openssl")?;
        let dir = TempDir::new("ca")?;
        let p = |n: &str| dir.join(n);
        let s = |x: &PathBuf| x.display().to_string();
        let (ca_key, ca_cert, key, csr, cert, ext) =
            (p("ca.key"), p("ca.pem"), p("server.key"), p("server.csr"), p("server.pem"), p("ext.cnf"));
        run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=idbridge test CA"])
                .args(["-keyout", &s(&ca_key), "-out", &s(&ca_cert)]),
            None,
        )?;
        run(
            Command::new("openssl").args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ]),
            None,
        )?;
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
            .map_err(crate::process::io_err("writing ext.cnf"))?;
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in", &s(&csr), "-CA", &s(&ca_cert), "-CAkey", &s(&ca_key)])
                .args(["-CAcreateserial", "-extfile", &s(&ext), "-out", &s(&cert)]),
            None,
        )?;
        Ok(TestCa { ca_cert, server_cert: cert, server_key: key, _dir: dir })
    }
}
