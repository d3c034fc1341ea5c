//! Helpers for tests that run the real `tandem` binary on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// A `tandem serve` child process.
pub struct Node {
    pub child: Child,
    pub dir: PathBuf,
    pub config: Option<PathBuf>,
    pub listeners: std::collections::BTreeMap<String, String>,
    pub lines: Vec<String>,
}

impl Node {
    /// Start `tandem serve` in `cwd` (with `config` if given) and wait until
    /// it prints its listeners.
    pub fn start(cwd: &Path, config: Option<&Path>) -> Node {
        let mut cmd = tandem();
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .arg("serve")
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tandem serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut listeners = std::collections::BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !listeners.contains_key("admin") {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("tandem serve did not report its listeners: {lines:?}"));
            if let Some(rest) = line.strip_prefix("tandem: ") {
                if let Some((name, addr)) = rest.split_once(" listening on ") {
                    listeners.insert(name.to_string(), addr.to_string());
                }
            }
            lines.push(line);
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Node {
            child,
            dir: cwd.to_path_buf(),
            config: config.map(Path::to_path_buf),
            listeners,
            lines,
        }
    }

    /// Run a CLI command against this node.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        cli(&self.dir, self.config.as_deref(), args, stdin)
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tandem serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self, name: &str) -> String {
        self.listeners[name].trim_start_matches("http://").to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn terminate(child: &Child) {
    let r = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(r.success());
}

pub fn cli(cwd: &Path, config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = tandem();
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with every listener on an ephemeral loopback port.
pub fn write_config(dir: &Path, node_id: &str, extra: &str) -> PathBuf {
    let p = dir.join("tandem.toml");
    let data = dir.join("data");
    std::fs::write(
        &p,
        format!(
            "[node]\nid = \"{node_id}\"\ndata_dir = \"{}\"\n[imap]\nlisten = \"127.0.0.1:0\"\n[lmtp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    p
}
