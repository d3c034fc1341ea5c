//! `tandem-rebuild DATA_DIR`: materialise a stopped node's views again from
//! its log (after an audit found them wrong, or after a format change).

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Rebuild a stopped Tandem node's views from its log")]
struct Args {
    /// The node's data directory (holds db/ and node-id).
    data_dir: PathBuf,
}

/// The glibc tunable that backs malloc's heap with transparent huge pages
/// (madvise), read by the C library when a process starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGES: &str = "glibc.malloc.hugetlb";

/// Start again with [`HUGE_PAGES`] set, unless `GLIBC_TUNABLES` names it
/// already (`glibc.malloc.hugetlb=0` keeps 4 KiB pages). A rebuild grows
/// its in-memory views to hundreds of megabytes at random places, and
/// faulting that in 4 KiB at a time took a tenth of its time: with huge
/// pages a rebuild of 100,130 entries ran in 0.45-0.55 s against
/// 0.53-0.59 s (six alternating runs each, `benches/README.md`). Returns
/// only if the new start could not be made, and the rebuild goes on as is.
fn with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if tunables.contains(HUGE_PAGES) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
        let value = if tunables.is_empty() {
            format!("{HUGE_PAGES}=1")
        } else {
            format!("{tunables}:{HUGE_PAGES}=1")
        };
        let err = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .exec();
        eprintln!("tandem-rebuild: could not start again with huge pages ({err}); going on without");
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    with_huge_pages();
    let n = tandem_tools::rebuild(&a.data_dir)?;
    println!("rebuilt the views from {n} entries");
    Ok(())
}
