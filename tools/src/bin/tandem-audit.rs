//! `tandem-audit DATA_DIR`: verify a stopped node's log and check its views
//! against a replay. Exit status 0 when sound, 1 when a problem was found.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Verify a stopped Tandem node: hash chains, and views against a replay of the log")]
struct Args {
    /// The node's data directory (holds db/ and node-id).
    data_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let a = Args::parse();
    let scratch = tempfile::tempdir()?;
    let r = tandem_tools::audit(&a.data_dir, scratch.path())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "node {}: {} entries verified, {} replayed",
            r.node_id, r.entries_verified, r.entries_replayed
        );
        for (o, s) in &r.heads {
            println!("  origin {o} seq {s}");
        }
        println!("views  {}\nreplay {}", r.views_digest, r.replay_digest);
        for p in &r.problems {
            println!("PROBLEM {p}");
        }
        println!("{}", if r.ok { "ok" } else { "FAILED" });
    }
    Ok(if r.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
