//! Redis for the cluster tests: servers started here, on free loopback
//! ports, each in a temporary directory with its own AOF, and killed when
//! dropped — nothing relies on a Redis that happens to be running.
//!
//! `redis-server` comes from Debian's package (`scripts/test.sh` installs
//! it). Without it these tests are skipped with a note, unless
//! `PARLOR_REQUIRE_REDIS=1` (set by `scripts/test.sh`), which makes a
//! missing Redis a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::binary::free_addr;

/// Whether Redis can be run here; false (with a note) skips a test.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("PARLOR_REQUIRE_REDIS").is_err(),
            "redis-server is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipped: redis-server is not installed (scripts/test.sh installs it)");
    }
    found
}

/// One `redis-server` process.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
    cluster: bool,
    /// Serves TLS only (no plain port), with the certificates in `dir`.
    tls: bool,
}

impl Redis {
    /// A single server with AOF `appendfsync always`: what an ack needs to
    /// survive a kill -9 of Redis.
    pub fn start(dir: &Path) -> Redis {
        Self::spawn(dir, free_addr(), false, false)
    }

    /// Like `start`, serving TLS only, with a certificate for 127.0.0.1
    /// signed by a CA of its own: `ca.pem` in `dir` (what a client must
    /// trust, e.g. through `SSL_CERT_FILE`).
    pub fn start_tls(dir: &Path) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        make_certificates(dir);
        Self::spawn(dir, free_addr(), false, true)
    }

    fn spawn(dir: &Path, addr: SocketAddr, cluster: bool, tls: bool) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let mut r = Redis {
            child: None,
            addr,
            dir: dir.to_owned(),
            cluster,
            tls,
        };
        r.launch();
        r
    }

    /// The CA a TLS server's certificate is signed by.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("redis-server");
        let port = self.addr.port().to_string();
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file());
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--logfile", "redis.log"]);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}", self.addr)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and AOF.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A command through `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        if !self.tls {
            return cli(self.addr, args).unwrap_or_default();
        }
        let ca = self.ca_file();
        let mut all = vec!["--tls", "--cacert", ca.to_str().unwrap()];
        all.extend(args);
        cli(self.addr, &all).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "parlor test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// A Redis Cluster of three primaries (no replicas), made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|i| Redis::spawn(&dir.join(format!("node{i}")), free_addr(), true, false))
            .collect();
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(|n| n.addr.to_string()));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let status = Command::new("redis-cli")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `--cluster` value: every node as a seed.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}
