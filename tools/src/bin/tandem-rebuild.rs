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

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tandem_tools::start_again_with_huge_pages("tandem-rebuild");
    let n = tandem_tools::rebuild(&a.data_dir)?;
    println!("rebuilt the views from {n} entries");
    Ok(())
}
