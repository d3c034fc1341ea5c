//! A real client end to end: offlineimap syncs an account from Tandem into a
//! local Maildir over plaintext IMAP on loopback, then pushes local changes
//! back (a flag, a new message, a deletion); Tandem's state matches, and a
//! further sync changes nothing on either side.

mod common;
use common::{blob, messages, node_for_sync_client, Node};
use std::path::{Path, PathBuf};
use std::process::Command;

fn offlineimap(cfg: &Path) -> String {
    let out = Command::new("timeout")
        .arg("50")
        .arg("offlineimap")
        .arg("-c")
        .arg(cfg)
        .arg("-o")
        .arg("-u")
        .arg("basic")
        .env("HOME", cfg.parent().unwrap())
        .output()
        .expect("offlineimap (offlineimap3) is installed by .ci/setup");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "offlineimap failed ({}):\n{text}", out.status);
    assert!(!text.contains("ERROR"), "offlineimap reported an error:\n{text}");
    text
}

/// Message files of a Maildir folder, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            v.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    v.sort();
    v
}

fn find(files: &[PathBuf], needle: &str) -> PathBuf {
    files
        .iter()
        .find(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains(needle))
        .unwrap_or_else(|| panic!("no local file holds {needle:?}: {files:?}"))
        .clone()
}

/// (uid, flags, body) of every message in a folder, as the server holds it.
fn server_state(node: &Node, folder: &str) -> Vec<(u64, Vec<String>, String)> {
    let mut v: Vec<_> = messages(node, "alice@example.org", folder)
        .iter()
        .map(|m| {
            let mut flags: Vec<String> = m["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            flags.sort();
            (
                m["uid"].as_u64().unwrap(),
                flags,
                String::from_utf8_lossy(&blob(node, m["blob"].as_str().unwrap())).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn offlineimap_pulls_then_pushes_local_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, host, port) = node_for_sync_client(dir.path(), "offlineimap");
    let local = dir.path().join("local");
    let meta = dir.path().join("meta");
    let cfg = dir.path().join("offlineimaprc");
    std::fs::write(
        &cfg,
        format!(
            "[general]\naccounts = tandem\nmetadata = {meta}\n\n\
             [Account tandem]\nlocalrepository = local\nremoterepository = remote\n\n\
             [Repository local]\ntype = Maildir\nlocalfolders = {local}\n\n\
             [Repository remote]\ntype = IMAP\nremotehost = {host}\nremoteport = {port}\n\
             remoteuser = alice@example.org\nremotepass = secret\nssl = no\nstarttls = no\n",
            meta = meta.display(),
            local = local.display()
        ),
    )
    .unwrap();
    offlineimap(&cfg);
    let inbox = files(&local.join("INBOX"));
    assert_eq!(inbox.len(), 3, "{inbox:?}");
    let work = files(&local.join("Work"));
    assert_eq!(work.len(), 1, "{work:?}");
    // The \Seen flag came down as Maildir's S.
    assert!(work[0].to_string_lossy().ends_with('S'), "{work:?}");
    for i in 0..3 {
        find(&inbox, &format!("Subject: inbox {i}"));
    }

    // Local changes: flag one, delete one, add one.
    let flag_me = find(&inbox, "Subject: inbox 0");
    let delete_me = find(&inbox, "Subject: inbox 1");
    let name = flag_me.file_name().unwrap().to_string_lossy().into_owned();
    let flagged = match name.split_once(":2,") {
        Some((base, info)) => {
            let mut f: Vec<char> = info.chars().chain(['F']).collect();
            f.sort();
            format!("{base}:2,{}", f.into_iter().collect::<String>())
        }
        None => format!("{name}:2,F"),
    };
    std::fs::rename(&flag_me, local.join("INBOX/cur").join(flagged)).unwrap();
    std::fs::remove_file(delete_me).unwrap();
    let written = "From: me@example.org\r\nSubject: written locally\r\nMessage-ID: <local1@example.org>\r\n\r\nhi from the Maildir\r\n";
    std::fs::write(local.join("INBOX/new/1700000000.local1.host"), written).unwrap();
    offlineimap(&cfg);

    let inbox = server_state(&node, "INBOX");
    assert_eq!(inbox.len(), 3, "3 delivered + 1 new - 1 deleted: {inbox:?}");
    assert!(
        !inbox.iter().any(|m| m.2.contains("Subject: inbox 1")),
        "deleted message still there: {inbox:?}"
    );
    let pushed: Vec<_> = inbox.iter().filter(|m| m.2.contains("Subject: written locally")).collect();
    assert_eq!(pushed.len(), 1, "new message not pushed once: {inbox:?}");
    assert!(
        pushed[0].2.ends_with("\r\nhi from the Maildir\r\n"),
        "pushed body differs: {:?}",
        pushed[0].2
    );
    let flagged: Vec<_> = inbox.iter().filter(|m| m.1.iter().any(|f| f == "\\Flagged")).collect();
    assert_eq!(flagged.len(), 1, "flag not pushed: {inbox:?}");
    assert!(flagged[0].2.contains("Subject: inbox 0"), "wrong message flagged: {inbox:?}");
    assert_eq!(server_state(&node, "Work").len(), 1);
    let local_after = files(&local.join("INBOX"));
    assert_eq!(local_after.len(), 3, "{local_after:?}");

    // A further sync changes nothing on either side.
    offlineimap(&cfg);
    assert_eq!(server_state(&node, "INBOX"), inbox, "second sync changed the server");
    assert_eq!(files(&local.join("INBOX")), local_after, "second sync changed the Maildir");
}
