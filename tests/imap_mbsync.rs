//! A real client end to end: mbsync (isync) syncs an account from Tandem
//! into a local Maildir, then pushes local changes back (new message, flag,
//! deletion, new folder); Tandem's state matches.

mod common;
use common::{messages, node_for_sync_client};
use std::path::Path;
use std::process::Command;

fn mbsync(cfg: &Path) {
    let out = Command::new("mbsync")
        .arg("-c")
        .arg(cfg)
        .arg("-a")
        .output()
        .expect("mbsync is installed by .ci/setup");
    assert!(
        out.status.success(),
        "mbsync failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            v.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    v.sort();
    v
}

#[test]
fn mbsync_pulls_then_pushes_local_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, host, port) = node_for_sync_client(dir.path(), "mbsync");
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let cfg = dir.path().join("mbsyncrc");
    std::fs::write(
        &cfg,
        format!(
            "IMAPAccount tandem\nHost {host}\nPort {port}\nUser alice@example.org\nPass secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount tandem\n\n\
             MaildirStore local\nPath {l}/\nInbox {l}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n",
            l = local.display()
        ),
    )
    .unwrap();
    mbsync(&cfg);
    let inbox = files(&local.join("INBOX"));
    assert_eq!(inbox.len(), 3, "{inbox:?}");
    assert_eq!(files(&local.join("Work")).len(), 1);
    for f in ["Sent", "Trash", "Drafts", "Junk", "Archive"] {
        assert!(local.join(f).is_dir(), "{f} not synced");
    }

    // Local changes: flag one, delete one, add one, a new folder.
    let flag_me = inbox
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("inbox 0"))
        .unwrap()
        .clone();
    let delete_me = inbox
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("inbox 1"))
        .unwrap()
        .clone();
    let name = flag_me.file_name().unwrap().to_string_lossy().into_owned();
    let flagged = if let Some((base, info)) = name.split_once(":2,") {
        format!("{base}:2,F{info}")
    } else {
        format!("{name}:2,F")
    };
    std::fs::rename(&flag_me, local.join("INBOX/cur").join(flagged)).unwrap();
    let dname = delete_me.file_name().unwrap().to_string_lossy().into_owned();
    let trashed = if let Some((base, info)) = dname.split_once(":2,") {
        format!("{base}:2,{info}T")
    } else {
        format!("{dname}:2,T")
    };
    std::fs::rename(&delete_me, local.join("INBOX/cur").join(trashed)).unwrap();
    std::fs::write(
        local.join("INBOX/new/1700000000.local1.host"),
        "From: me@example.org\nSubject: written locally\n\nhi\n",
    )
    .unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(local.join("Local").join(sub)).unwrap();
    }
    std::fs::write(
        local.join("Local/new/1700000001.local2.host"),
        "From: me@example.org\nSubject: in a new folder\n\nhi\n",
    )
    .unwrap();
    mbsync(&cfg);

    let inbox = messages(&node, "alice@example.org", "INBOX");
    assert_eq!(inbox.len(), 3, "3 delivered + 1 new - 1 deleted: {inbox:?}");
    let subjects: Vec<String> = inbox
        .iter()
        .map(|m| String::from_utf8_lossy(&common::blob(&node, m["blob"].as_str().unwrap())).into_owned())
        .collect();
    assert!(subjects.iter().any(|s| s.contains("written locally")), "new message not pushed");
    assert!(!subjects.iter().any(|s| s.contains("inbox 1")), "deleted message still there");
    let flagged: Vec<_> = inbox
        .iter()
        .filter(|m| m["flags"].as_array().unwrap().iter().any(|f| f == "\\Flagged"))
        .collect();
    assert_eq!(flagged.len(), 1, "flag not pushed: {inbox:?}");
    let local_folder = messages(&node, "alice@example.org", "Local");
    assert_eq!(local_folder.len(), 1, "new folder not created with its message");
    // A third run changes nothing.
    mbsync(&cfg);
    assert_eq!(messages(&node, "alice@example.org", "INBOX").len(), 3);
}
