//! A round-robin TCP load balancer for multi-node tests: each new
//! connection goes to the next backend; a backend that refuses the
//! connection (a killed node) is skipped, as a load balancer's health check
//! would. Clients that want every request on another node open a new
//! connection per request ([`crate::Browser::without_keep_alive`]).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::TestkitError;
use crate::process::io_err;

#[derive(Debug)]
pub struct RoundRobinProxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections handed to each backend so far (by position).
    served: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
}

impl RoundRobinProxy {
    /// Listens on a free loopback port; backends are set later
    /// ([`RoundRobinProxy::set_backends`]), once the nodes know the proxy's address.
    pub fn start() -> Result<RoundRobinProxy, TestkitError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the proxy"))?;
        let addr = listener.local_addr().map_err(io_err("the proxy's address"))?;
        let backends: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
        let served: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s, st) = (backends.clone(), served.clone(), stop.clone());
        let next = AtomicUsize::new(0);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let list = b.lock().map(|l| l.clone()).unwrap_or_default();
                let start = next.fetch_add(1, Ordering::SeqCst);
                let mut chosen = None;
                for i in 0..list.len() {
                    let index = (start + i) % list.len();
                    let Some(addr) = list.get(index) else { continue };
                    if let Ok(server) = TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
                        chosen = Some((index, server));
                        break;
                    }
                }
                let Some((index, server)) = chosen else { continue };
                if let Ok(mut counts) = s.lock() {
                    if counts.len() < list.len() {
                        counts.resize(list.len(), 0);
                    }
                    if let Some(c) = counts.get_mut(index) {
                        *c += 1;
                    }
                }
                pipe(client, server);
            }
        });
        Ok(RoundRobinProxy { addr, backends, served, stop })
    }

    pub fn set_backends(&self, backends: &[SocketAddr]) {
        if let Ok(mut list) = self.backends.lock() {
            *list = backends.to_vec();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections each backend took so far.
    pub fn served(&self) -> Vec<usize> {
        self.served.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::spawn(move || copy(client, server));
    std::thread::spawn(move || copy(server2, client2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buffer.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
