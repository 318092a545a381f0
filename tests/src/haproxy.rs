//! The shared HAProxy peer (`../shared/peers/haproxy`): its directory and its upstream
//! (`backend.cfg`, a second HAProxy that answers every request itself, without reading the
//! request body).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The peer harness, beside the workspace (in CI `shared/` is beside the clone too).
pub fn peer_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/haproxy");
    assert!(
        dir.join("matrix.sh").is_file(),
        "the shared HAProxy peer harness is missing: expected {} (with matrix.sh, backend.cfg, \
         gen-keys.sh, mint.py) beside the workspace, as ../shared/peers/haproxy",
        dir.display()
    );
    dir.canonicalize().expect("canonical peer dir")
}

/// A process started by this test, killed by PID on drop.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The peer's upstream: `haproxy -f backend.cfg` on a free loopback port. A port taken
/// between picking and binding makes haproxy exit; then another port is tried.
pub fn start_backend(peer: &Path, work: &Path) -> (Killed, SocketAddr) {
    let mut last_log = String::new();
    for attempt in 0..5 {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("pick a port");
            l.local_addr().expect("addr")
        };
        let log_path = work.join(format!("backend-{attempt}.log"));
        let log = std::fs::File::create(&log_path).expect("backend log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(peer.join("backend.cfg"))
            .arg("-db")
            .env("BACKEND_ADDR", addr.to_string())
            .env("BACKEND_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut backend = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (backend, addr);
            }
            if let Ok(Some(_)) = backend.0.try_wait() {
                break; // port taken, or a config problem: see the log below
            }
            assert!(
                Instant::now() < deadline,
                "backend haproxy not answering on {addr} after 10 s: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    panic!("backend haproxy did not start in 5 attempts; last log:\n{last_log}");
}
