//! `wattledger serve` as a child process, for the tests that need the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wattledger");

/// Variables that would make the binary use another key or store than the test's.
pub const FOREIGN_ENV: [&str; 8] = [
    "WATTLEDGER_JWT_PUBLIC_KEY_FILE",
    "WATTLEDGER_JWT_PRIVATE_KEY_FILE",
    "WATTLEDGER_JWT_ALGORITHM",
    "WATTLEDGER_JWT_SECRET",
    "WATTLEDGER_JWT_ISSUER",
    "WATTLEDGER_JWT_AUDIENCE",
    "WATTLEDGER_STORE",
    "WATTLEDGER_LISTEN",
];

/// The binary with none of the caller's wattledger settings, logging at `info`.
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    for k in FOREIGN_ENV {
        c.env_remove(k);
    }
    c.env("RUST_LOG", "info");
    c
}

/// A `wattledger serve` child; killed (SIGKILL) if a test fails while it runs.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {}", self.child.id());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// How a test starts `serve`.
pub struct Start<'a> {
    /// Where the log (stderr) goes.
    pub dir: &'a Path,
    pub log_name: &'a str,
    pub store: &'a str,
    /// More arguments for `serve` (such as `--demo`).
    pub extra_args: &'a [&'a str],
    /// What must answer a success before the server counts as started, and how long to wait.
    pub ready_path: &'a str,
    pub wait: Duration,
}

/// Starts `cmd serve` on a free port and waits (bounded) until the ready path answers.
pub async fn serve(mut cmd: Command, s: Start<'_>) -> Server {
    let (ready_path, wait) = (s.ready_path, s.wait);
    let port = free_port();
    let log = s.dir.join(s.log_name);
    let child = cmd
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store", s.store])
        .args(s.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start wattledger serve");
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(r) = client.get(server.url(ready_path)).send().await
            && r.status().is_success()
        {
            return server;
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!(
                "wattledger serve exited ({status}) before {ready_path} answered:\n{}",
                server.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{ready_path} did not answer within {wait:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
