//! A real interactive client end to end: neomutt, driven through a detached
//! tmux session, opens a Tandem INBOX over IMAP on loopback, shows the
//! delivered subjects, flags one message, deletes one and saves one to
//! another folder (each checked on the server), and shows a message
//! delivered over LMTP while it has the mailbox open.

mod common;
use common::{blob, deliver_range, messages, node_with_users, Node};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its own socket), killed on drop with
/// everything running in it.
struct Tmux {
    socket: PathBuf,
    home: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).env("HOME", &self.home).env("TERM", "xterm-256color");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("tmux is installed by .ci/setup");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "mutt"])
    }

    /// Poll the pane (at most 20 s, every 100 ms) until `pred` holds.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        for _ in 0..200 {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("neomutt never showed {what}; the screen:\n{}", self.screen());
    }

    /// Type `text` literally.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "mutt", "-l", text]);
    }

    /// Press named keys (`Enter`, `C-u`, ...).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "mutt"];
        args.extend_from_slice(keys);
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// Subjects of a folder's messages as the server holds them, with whether
/// each is \Flagged.
fn server(node: &Node, folder: &str) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = messages(node, "alice@example.org", folder)
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&blob(node, m["blob"].as_str().unwrap())).into_owned();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string();
            (subject, m["flags"].as_array().unwrap().iter().any(|f| f == "\\Flagged"))
        })
        .collect();
    v.sort();
    v
}

fn wait_server(node: &Node, folder: &str, want: &[(&str, bool)], screen: impl Fn() -> String) {
    let want: Vec<(String, bool)> = want.iter().map(|(s, f)| (s.to_string(), *f)).collect();
    if !common::wait_until(20, || server(node, folder) == want) {
        panic!(
            "{folder} on the server is {:?}, not {want:?}; neomutt shows:\n{}",
            server(node, folder),
            screen()
        );
    }
}

/// The status flags neomutt's index shows (`%Z`, between brackets) on the
/// line of `subject`.
fn flags(screen: &str, subject: &str) -> Option<String> {
    let line = screen.lines().find(|l| l.ends_with(&format!("] {subject}")))?;
    let (_, rest) = line.split_once('[')?;
    Some(rest.split_once(']')?.0.to_string())
}

/// Search for `subject` in the index (moving the cursor to it).
fn select(t: &Tmux, subject: &str) {
    t.keys(&["/"]);
    t.wait("the search prompt", |s| s.contains("Search for:"));
    t.type_text(subject);
    t.keys(&["Enter"]);
}

#[test]
fn neomutt_reads_flags_deletes_saves_and_sees_new_mail() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "neomutt", "", &["alice@example.org"]);
    deliver_range(&node, "alice@example.org", "nmail", 0..3);
    let port = node.addr("imap").rsplit_once(':').unwrap().1.to_string();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let muttrc = home.join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set folder = \"imap://127.0.0.1:{port}/\"\n\
             set spoolfile = \"+INBOX\"\n\
             set imap_user = \"alice@example.org\"\n\
             set imap_pass = \"secret\"\n\
             set imap_authenticators = \"login\"\n\
             set ssl_starttls = no\n\
             set ssl_force_tls = no\n\
             set mail_check = 1\n\
             set timeout = 1\n\
             set imap_keepalive = 30\n\
             set delete = yes\n\
             set confirmappend = no\n\
             set confirmcreate = no\n\
             set record = \"\"\n\
             set postponed = \"+Drafts\"\n\
             set sleep_time = 0\n\
             set wait_key = no\n\
             set move = no\n\
             set sort = date-received\n\
             set index_format = \"%4C [%Z] %s\"\n"
        ),
    )
    .unwrap();
    let t = Tmux {
        socket: dir.path().join("tmux.sock"),
        home: home.clone(),
    };
    let mutt = format!("neomutt -n -F {}", muttrc.display());
    t.run(&["new-session", "-d", "-s", "mutt", "-x", "200", "-y", "50", &mutt]);

    // The INBOX with the delivered subjects.
    t.wait("the three delivered subjects", |s| {
        (0..3).all(|i| s.contains(&format!("nmail-{i}")))
    });

    // Flag nmail-0, delete nmail-1, save nmail-2 to Archive (which marks
    // it deleted here), then sync the mailbox.
    select(&t, "nmail-0");
    t.keys(&["F"]);
    t.wait("the flag on nmail-0", |s| flags(s, "nmail-0").is_some_and(|f| f.contains('!')));
    select(&t, "nmail-1");
    t.keys(&["d"]);
    t.wait("nmail-1 marked deleted", |s| flags(s, "nmail-1").is_some_and(|f| f.contains('D')));
    select(&t, "nmail-2");
    t.keys(&["s"]);
    t.wait("the save prompt", |s| s.contains("Save to mailbox"));
    t.keys(&["C-u"]);
    t.type_text("=Archive");
    t.keys(&["Enter"]);
    t.wait("nmail-2 saved and marked deleted", |s| {
        flags(s, "nmail-2").is_some_and(|f| f.contains('D'))
    });
    wait_server(&node, "Archive", &[("nmail-2", false)], || t.screen());
    t.keys(&["$"]);
    wait_server(&node, "INBOX", &[("nmail-0", true)], || t.screen());
    t.wait("the index without the deleted messages", |s| {
        s.contains("nmail-0") && !s.contains("nmail-1") && !s.contains("nmail-2")
    });

    // New mail while the mailbox is open.
    deliver_range(&node, "alice@example.org", "late", 0..1);
    t.wait("the message delivered while open", |s| s.contains("late-0"));
    let s = t.screen();
    assert!(s.contains("nmail-0"), "{s}");
    wait_server(&node, "INBOX", &[("late-0", false), ("nmail-0", true)], || t.screen());
    drop(t);
    assert!(node.stop());
}
