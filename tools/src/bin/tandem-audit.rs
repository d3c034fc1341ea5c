//! `tandem-audit PATH`: the short name of `tandem-replay audit PATH` (a
//! stopped node's data directory or a backup directory). Exit status 0 when
//! sound, 1 when a problem was found.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Verify a stopped Tandem node or a backup: hash chains, bodies, and views against a replay")]
struct Args {
    /// The node's data directory (holds db/ and node-id), or a backup directory.
    path: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let a = Args::parse();
    let scratch = tempfile::tempdir()?;
    let r = tandem_tools::audit_path(&a.path, scratch.path(), &Default::default())?;
    tandem_tools::print_audit(&r, a.json)?;
    Ok(if r.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
