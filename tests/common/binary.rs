//! The real `parlor` binary in a child process: start it on a free port,
//! wait for `/healthz`, signal it, and wait (bounded) for its exit. Killed
//! when dropped, so a failing test leaves nothing behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{get, TIMEOUT};

pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Binary {
    /// `parlor serve --store redb --data-dir DIR --addr A EXTRA…`, healthy.
    /// Its output (logs and errors) goes to `DIR.log`.
    pub async fn start(dir: &Path, extra: &[&str]) -> Binary {
        Self::start_at(dir, free_addr(), extra).await
    }

    pub async fn start_at(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Binary {
        Self::start_env(dir, addr, extra, &[]).await
    }

    /// Like `start_at`, with `PARLOR_*` settings in the environment too: a
    /// setting an older build does not know is ignored there instead of
    /// refused, so one test can run against a build from before a flag.
    pub async fn start_env(
        dir: &Path,
        addr: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        // PARLOR_TEST_BIN runs these tests against another build (an older
        // release, to show a test failed before its fix).
        let bin = std::env::var("PARLOR_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_parlor").to_string());
        let mut child = Command::new(bin)
            .args(["serve", "--store", "redb", "--data-dir"])
            .arg(dir)
            .args(["--addr", &addr.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            // Logs go to stdout (tracing's default), errors to stderr: both kept.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start parlor");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                panic!("parlor exited early with {status}: {log}");
            }
            let up = tokio::net::TcpStream::connect(addr).await.is_ok();
            if up && get(addr, "/healthz").await.status == 200 {
                return Binary { child, addr };
            }
            assert!(Instant::now() < deadline, "parlor did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB (`VmRSS` in /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits at most `within` for the process to exit.
    pub async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
