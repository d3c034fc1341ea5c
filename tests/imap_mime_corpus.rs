//! Real-world and generated MIME messages through IMAP: every message can be
//! APPENDed, FETCHed as ENVELOPE / BODYSTRUCTURE / BODY / every section its
//! BODYSTRUCTURE implies, and BODY[] gives back the exact appended bytes
//! (the file with bare LF turned into CRLF, as a client sends it).
//!
//! The checks themselves are `check_mime_corpus` in tests/py/imaptest.py; a
//! failure names each failing file and what was wrong.

mod common;
use common::{node_with_users, python};
use std::path::{Path, PathBuf};
use std::process::Command;

const U: &str = "alice@example.org";

/// CPython's `test/test_email/data/`, from the `python3` on PATH, Debian's
/// `/usr/bin/python3`, or `/usr/lib/python3*/test/test_email/data`. Panics
/// (never skips) when none has it.
fn cpython_email_data() -> PathBuf {
    let mut tried = Vec::new();
    for py in ["python3", "/usr/bin/python3"] {
        let out = Command::new(py)
            .args(["-c", "import test, os; print(os.path.dirname(test.__file__))"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("test_email/data");
                if dir.join("msg_01.txt").is_file() {
                    return dir;
                }
                tried.push(dir.display().to_string());
            }
            Ok(o) => tried.push(format!("{py}: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => tried.push(format!("{py}: {e}")),
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("test/test_email/data"))
            .collect();
        dirs.sort();
        for dir in dirs {
            if dir.join("msg_01.txt").is_file() {
                return dir;
            }
            tried.push(dir.display().to_string());
        }
    }
    tried.sort();
    tried.dedup();
    panic!(
        "CPython's test/test_email/data not found (tried: {tried:?}); on Debian 12 install \
         the package libpython3.11-testsuite"
    );
}

/// Regular files under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Start a node, check every file with `check_mime_corpus`, and return the
/// script's output.
fn check_corpus(name: &str, files: &[PathBuf]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), name, "", &[U]);
    let list = dir.path().join("files.txt");
    let text: String = files.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list, text).unwrap();
    let out = python(
        &node,
        &format!(
            r#"
from imaptest import *
files = open({list:?}).read().splitlines()
check_mime_corpus({U:?}, files, max_seconds=120)
"#,
            list = list.display().to_string()
        ),
    );
    print!("{out}");
    // Every message landed once.
    assert_eq!(common::messages(&node, U, "INBOX").len(), files.len());
    out
}

#[test]
fn cpython_email_test_data() {
    let data = cpython_email_data();
    // The messages of the directory (the rest are images and sounds for
    // other tests, not messages).
    let files: Vec<PathBuf> = files_under(&data)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("msg_") && n.ends_with(".txt")
        })
        .collect();
    assert!(files.len() >= 40, "only {} msg_*.txt files in {}", files.len(), data.display());
    check_corpus("cpython", &files);
}

#[test]
fn generated_corpus() {
    let gen = common::gen_corpus();
    let out = tempfile::tempdir().unwrap();
    let st = Command::new("python3")
        .arg(&gen)
        .args(["maildir", "--out"])
        .arg(out.path())
        .args(["--users", "1", "--messages", "300", "--seed", "3"])
        .output()
        .expect("python3 gen_corpus.py");
    assert!(st.status.success(), "gen_corpus.py failed: {}", String::from_utf8_lossy(&st.stderr));
    let files: Vec<PathBuf> = files_under(&out.path().join("user1/Maildir"))
        .into_iter()
        .filter(|p| {
            let parent = p.parent().unwrap().file_name().unwrap();
            parent == "cur" || parent == "new"
        })
        .collect();
    assert_eq!(files.len(), 300, "gen_corpus.py wrote {} messages", files.len());
    check_corpus("generated", &files);
}
