//! Every runbook in `docs/runbooks/` walked literally by real daemons on
//! loopback: its commands run in order, in a shell, on the host they name.
//!
//! A runbook is written for hosts `mx1`, `mx2`, … with the addresses of
//! documentation networks (`192.0.2.10:7000`) and the paths of the systemd
//! unit (`/etc/tandem`, `/var/lib/tandem`). The walk gives each host a
//! directory (`etc/`, `data/`) and every address a free port on
//! 127.0.0.1 (`127.0.0.1:PORT` is per host), substitutes them into the
//! command, runs it with `sh -c` (with this build's `tandem` first on
//! PATH), and maps them back in the output. What the runbook shows:
//!
//! - a ```` ```toml ```` block whose first line is `# mx1:/etc/tandem/x.toml`
//!   is written to that file on that host;
//! - in a ```` ```sh ```` block, `mx1$ COMMAND` is run on mx1 and must exit
//!   0; the lines under it, up to the next prompt, are output it must show
//!   (each line somewhere in the output, runs of blanks equal, `…` standing
//!   for anything); a command with output shown is re-run until it shows it
//!   (40 s: a vanished peer is noticed by the mirror's 30 s idle timeout),
//!   as an operator would re-run `tandem status`;
//! - `systemctl start|stop|restart tandem` and `systemctl kill
//!   --signal=KILL tandem` act on the host's daemon (started with a
//!   `NOTIFY_SOCKET` and waited for until `READY=1`, as systemd does), and
//!   `scp FILE mx2:PATH` copies between host directories; these are the
//!   only commands not run as written.

mod common;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Step {
    File { host: String, path: String, text: String },
    Cmd { host: String, cmd: String, expect: Vec<String> },
}

/// The steps of a runbook, in order.
fn steps(md: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut lines = md.lines();
    while let Some(l) = lines.next() {
        let Some(lang) = l.trim_start().strip_prefix("```") else { continue };
        let block: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
        match lang.trim() {
            "toml" => {
                let Some(target) = block.first().and_then(|f| f.strip_prefix("# ")) else {
                    continue;
                };
                let Some((host, path)) = target.split_once(':') else { continue };
                if host.starts_with("mx") && path.starts_with('/') {
                    out.push(Step::File {
                        host: host.into(),
                        path: path.trim().into(),
                        text: block[1..].join("\n") + "\n",
                    });
                }
            }
            "sh" => {
                let mut i = 0;
                while i < block.len() {
                    let l = block[i];
                    i += 1;
                    let Some((host, cmd)) = l.split_once("$ ").filter(|(h, _)| h.starts_with("mx") && !h.contains(' ')) else {
                        continue;
                    };
                    let mut cmd = cmd.to_string();
                    while cmd.ends_with('\\') && i < block.len() {
                        cmd.pop();
                        cmd.push_str(block[i].trim_start());
                        i += 1;
                    }
                    let mut expect = Vec::new();
                    while i < block.len()
                        && !block[i]
                            .split_once("$ ")
                            .is_some_and(|(h, _)| h.starts_with("mx") && !h.contains(' '))
                    {
                        if !block[i].trim().is_empty() {
                            expect.push(block[i].to_string());
                        }
                        i += 1;
                    }
                    out.push(Step::Cmd {
                        host: host.into(),
                        cmd,
                        expect,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `a.b.c.d:port` tokens of `s`: (start, end, ip, port).
fn addresses(s: &str) -> Vec<(usize, usize, String, u16)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.'));
        if starts {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            let ip = &s[i..j];
            if ip.parse::<std::net::Ipv4Addr>().is_ok() && j < b.len() && b[j] == b':' {
                let mut k = j + 1;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                if let Ok(port) = s[j + 1..k].parse::<u16>() {
                    out.push((i, k, ip.to_string(), port));
                    i = k;
                    continue;
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `want` (with `…` for anything) on some line of `out`.
fn shows(out: &str, want: &str) -> bool {
    let parts: Vec<String> = want.split('…').map(normalise).collect();
    out.lines().map(normalise).any(|line| {
        let mut at = 0;
        parts.iter().all(|p| match line[at..].find(p.as_str()) {
            Some(i) => {
                at += i + p.len();
                true
            }
            None => false,
        })
    })
}

struct Host {
    dir: PathBuf,
    daemon: Option<Child>,
}

struct Walk {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    hosts: BTreeMap<String, Host>,
    /// Runbook address ("192.0.2.10:7000", or "mx1 127.0.0.1:8643") -> port.
    ports: BTreeMap<String, u16>,
    transcript: Vec<String>,
}

impl Walk {
    fn new() -> Walk {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tandem"), bin.join("tandem")).unwrap();
        Walk {
            _tmp: tmp,
            root,
            bin,
            hosts: BTreeMap::new(),
            ports: BTreeMap::new(),
            transcript: Vec::new(),
        }
    }

    fn host(&mut self, name: &str) -> &mut Host {
        let root = self.root.clone();
        self.hosts.entry(name.to_string()).or_insert_with(|| {
            let dir = root.join(name);
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            Host { dir, daemon: None }
        })
    }

    fn key(host: &str, ip: &str, port: u16) -> String {
        if ip == "127.0.0.1" {
            format!("{host} {ip}:{port}")
        } else {
            format!("{ip}:{port}")
        }
    }

    /// The runbook's text as it runs on `host`.
    fn on_host(&mut self, host: &str, s: &str) -> String {
        let dir = self.host(host).dir.clone();
        let mut out = String::new();
        let mut last = 0;
        for (a, b, ip, port) in addresses(s) {
            out.push_str(&s[last..a]);
            let p = *self.ports.entry(Self::key(host, &ip, port)).or_insert_with(common::free_port);
            out.push_str(&format!("127.0.0.1:{p}"));
            last = b;
        }
        out.push_str(&s[last..]);
        out.replace("/etc/tandem", &dir.join("etc").display().to_string())
            .replace("/var/lib/tandem", &dir.join("data").display().to_string())
    }

    /// Output of `host` as the runbook would show it.
    fn as_shown(&self, host: &str, s: &str) -> String {
        let dir = &self.hosts[host].dir;
        let back: BTreeMap<u16, String> = self
            .ports
            .iter()
            .filter(|(k, _)| !k.contains(' ') || k.starts_with(&format!("{host} ")))
            .map(|(k, p)| (*p, k.rsplit(' ').next().unwrap().to_string()))
            .collect();
        let mut out = String::new();
        let mut last = 0;
        for (a, b, ip, port) in addresses(s) {
            out.push_str(&s[last..a]);
            match back.get(&port).filter(|_| ip == "127.0.0.1") {
                Some(orig) => out.push_str(orig),
                None => out.push_str(&s[a..b]),
            }
            last = b;
        }
        out.push_str(&s[last..]);
        out.replace(&dir.join("etc").display().to_string(), "/etc/tandem")
            .replace(&dir.join("data").display().to_string(), "/var/lib/tandem")
    }

    fn start(&mut self, host: &str) {
        let dir = self.host(host).dir.clone();
        assert!(self.hosts[host].daemon.is_none(), "{host}: tandem is running already");
        let sock_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let child = Command::new(self.bin.join("tandem"))
            .arg("--config")
            .arg(dir.join("etc/tandem.toml"))
            .arg("serve")
            .current_dir(&dir)
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut buf = [0u8; 256];
        let ready = sock.recv(&mut buf).map(|n| buf[..n].starts_with(b"READY=1"));
        if ready.as_ref().map_or(true, |r| !r) {
            let mut child = child;
            let _ = child.kill();
            panic!(
                "{host}: tandem did not get ready ({ready:?}):\n{}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
        }
        self.hosts.get_mut(host).unwrap().daemon = Some(child);
    }

    fn stop(&mut self, host: &str, signal: &str) {
        let mut child = self
            .host(host)
            .daemon
            .take()
            .unwrap_or_else(|| panic!("{host}: tandem is not running"));
        let r = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(r.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{host}: tandem did not stop on SIG{signal}");
            std::thread::sleep(Duration::from_millis(20));
        };
        if signal == "TERM" {
            assert!(status.success(), "{host}: tandem stopped with {status}");
        }
    }

    /// Run one command on `host`: (success, output as the runbook shows it).
    fn run(&mut self, host: &str, cmd: &str) -> (bool, String) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["systemctl", "start", "tandem"] => self.start(host),
            ["systemctl", "stop", "tandem"] => self.stop(host, "TERM"),
            ["systemctl", "restart", "tandem"] => {
                self.stop(host, "TERM");
                self.start(host);
            }
            ["systemctl", "kill", "--signal=KILL", "tandem"] => self.stop(host, "KILL"),
            ["scp", from, to] => {
                let (other, path) = to.split_once(':').expect("scp FILE HOST:PATH");
                let from = self.on_host(host, from);
                let to = self.on_host(other, path);
                std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("scp {from} {to}: {e}"));
            }
            [first, ..] if first.starts_with("systemctl") => panic!("{host}: unsupported in a walk: {cmd}"),
            _ => {
                let real = self.on_host(host, cmd);
                let dir = self.hosts[host].dir.clone();
                let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(&real)
                    .current_dir(&dir)
                    .env("PATH", path)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                return (out.status.success(), self.as_shown(host, &text));
            }
        }
        (true, String::new())
    }

    fn step(&mut self, s: &Step) {
        match s {
            Step::File { host, path, text } => {
                let real_path = self.on_host(host, path);
                let real = self.on_host(host, text);
                std::fs::write(&real_path, real).unwrap();
                self.transcript.push(format!("[{host}] wrote {path}"));
            }
            Step::Cmd { host, cmd, expect } => {
                let deadline = Instant::now() + Duration::from_secs(40);
                loop {
                    let (ok, out) = self.run(host, cmd);
                    let missing: Vec<&String> = expect.iter().filter(|w| !shows(&out, w)).collect();
                    if ok && missing.is_empty() {
                        self.transcript.push(format!("{host}$ {cmd}\n{out}"));
                        break;
                    }
                    if expect.is_empty() || Instant::now() > deadline {
                        panic!(
                            "{host}$ {cmd}\n{}\n--- output:\n{out}\n--- missing:\n{missing:#?}\n--- walk so far:\n{}",
                            if ok { "exited 0" } else { "FAILED" },
                            self.transcript.join("\n")
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Walk runbooks in order (later ones start where earlier ones ended).
    fn through(names: &[&str]) -> Walk {
        let mut w = Walk::new();
        for name in names {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks").join(name);
            let md = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let steps = steps(&md);
            assert!(steps.len() >= 3, "{name}: only {} steps found", steps.len());
            w.transcript.push(format!("=== {name}"));
            for s in &steps {
                w.step(s);
            }
        }
        w
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        for h in self.hosts.values_mut() {
            if let Some(mut c) = h.daemon.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[test]
fn the_walk_reads_runbooks_as_written() {
    let md = "text\n```toml\n# mx1:/etc/tandem/tandem.toml\n[node]\nid = \"mx1\"\n```\n\
              ```sh\n# a comment\nmx1$ tandem status \\\n    --json\n\"node_id\": \"mx1\"\n\nmx2$ systemctl start tandem\n```\n";
    let s = steps(md);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(
        matches!(&s[0], Step::File { host, path, text } if host == "mx1" && path == "/etc/tandem/tandem.toml" && text == "[node]\nid = \"mx1\"\n")
    );
    assert!(
        matches!(&s[1], Step::Cmd { host, cmd, expect } if host == "mx1" && cmd == "tandem status --json" && expect == &["\"node_id\": \"mx1\""])
    );
    assert!(matches!(&s[2], Step::Cmd { host, cmd, expect } if host == "mx2" && cmd == "systemctl start tandem" && expect.is_empty()));
    let mut w = Walk::new();
    let a = w.on_host(
        "mx1",
        "listen = \"192.0.2.10:7000\" peers = [\"192.0.2.11:7000\"] admin \"127.0.0.1:8643\"",
    );
    let b = w.on_host("mx2", "peers = [\"192.0.2.10:7000\"] admin \"127.0.0.1:8643\" data /var/lib/tandem");
    let p = |k: &str| w.ports[k];
    assert!(a.contains(&format!("127.0.0.1:{}", p("192.0.2.10:7000"))) && b.contains(&format!("127.0.0.1:{}", p("192.0.2.10:7000"))));
    assert_ne!(p("mx1 127.0.0.1:8643"), p("mx2 127.0.0.1:8643"), "loopback ports are per host");
    assert!(b.ends_with(&format!("{}/mx2/data", w.root.display())));
    assert_eq!(
        w.as_shown("mx2", &b),
        "peers = [\"192.0.2.10:7000\"] admin \"127.0.0.1:8643\" data /var/lib/tandem"
    );
    assert!(shows(
        "  to 192.0.2.11:7000      connected    since 17",
        "to 192.0.2.11:7000 connected…since"
    ));
    assert!(!shows("to 192.0.2.11:7000 connecting", "to 192.0.2.11:7000 connected"));
}

#[test]
fn runbook_set_up_a_pair() {
    Walk::through(&["set-up-a-pair.md"]);
}

#[test]
fn runbook_planned_switchover() {
    Walk::through(&["set-up-a-pair.md", "planned-switchover.md"]);
}

#[test]
fn runbook_failover() {
    Walk::through(&["set-up-a-pair.md", "failover.md"]);
}

#[test]
fn runbook_read_the_status() {
    Walk::through(&["set-up-a-pair.md", "read-the-status.md"]);
}

#[test]
fn runbook_replace_a_dead_disk() {
    Walk::through(&["set-up-a-pair.md", "replace-a-dead-disk.md"]);
}

#[test]
fn runbook_add_a_mirror() {
    Walk::through(&["add-a-mirror.md"]);
}

#[test]
fn runbook_move_to_another_site() {
    Walk::through(&["set-up-a-pair.md", "move-to-another-site.md"]);
}

/// Every runbook in `docs/runbooks/` has a walk here.
#[test]
fn every_runbook_is_walked() {
    let me = include_str!("runbooks.rs");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") && name != "README.md" {
            n += 1;
            let walked = me
                .lines()
                .any(|l| l.trim_start().starts_with("Walk::through(") && l.contains(&format!("\"{name}\"]")));
            assert!(walked, "docs/runbooks/{name} has no test walking it to its end");
        }
    }
    assert!(n >= 7, "{n} runbooks");
}
