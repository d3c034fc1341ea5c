//! Side files are entries of the log: a node's continuous backup holds
//! them, and a node restored from it by `tandem-replay restore` writes them
//! back into its own sync dir without logging them again.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn sync_dirs(dir: &Path) -> String {
    format!(
        "[mirror]\nsync_dirs = {{ certs = \"{}\" }}\nsync_dirs_interval_ms = 100\n",
        dir.display()
    )
}

#[test]
fn side_files_come_back_from_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bk, certs) = (dir.path().join("data"), dir.path().join("backup"), dir.path().join("certs"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), b"the CA").unwrap();
    std::fs::set_permissions(certs.join("ca.pem"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt
        .block_on(tandem::server::start(&config_as("orig", &data, Some(&bk), &sync_dirs(&certs))))
        .unwrap();
    let origin = node.store.wal().local_origin();
    let store = node.store.clone();
    assert!(wait_until(20, || store.wal().heads().get(origin) == 1), "the file was not logged");
    // A clean stop brings the continuous backup up to date.
    rt.block_on(node.stop()).unwrap();

    let restored = dir.path().join("restored");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-replay"))
        .args(["restore", "--from"])
        .arg(&bk)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The restored node keeps its copy of the dir elsewhere, empty.
    let certs2 = dir.path().join("certs2");
    std::fs::create_dir_all(&certs2).unwrap();
    let node = rt
        .block_on(tandem::server::start(&config_as("orig", &restored, None, &sync_dirs(&certs2))))
        .unwrap();
    let holds = || {
        let p = certs2.join("ca.pem");
        std::fs::read(&p).is_ok_and(|b| b == b"the CA") && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o640)
    };
    assert!(wait_until(20, holds), "the restored node did not write the side file");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(node.store.wal().heads().get(origin), 1, "the restored node logged the file again");
    rt.block_on(node.stop()).unwrap();
}
