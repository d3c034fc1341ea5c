//! `tandem-replay`: rebuild, audit and restore outside a running node.
//!
//! - `rebuild DATA_DIR`: materialise a stopped node's views from its log.
//! - `audit PATH`: verify a stopped node's data directory or a backup
//!   directory; exit status 1 on any fault (for cron).
//! - `restore --from BACKUP --data-dir NEW [--until RFC3339 | --seq ORIGIN:SEQ]`:
//!   a whole node from a backup, to the latest state or to one event.
//! - `prune BACKUP --keep-within DURATION [--wait DURATION]`: retention.
//!
//! A backup is a directory or `s3://BUCKET/PREFIX` (`--s3-endpoint`,
//! `--s3-region`, `--s3-credentials`, or the AWS_* environment).

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tandem::backup::restore::Stop;
use tandem::backup::s3::S3Settings;

#[derive(Parser)]
#[command(
    name = "tandem-replay",
    version,
    about = "Rebuild, audit and restore Tandem nodes from their logs and backups"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
    /// S3-compatible service for s3://BUCKET/PREFIX backups (else
    /// AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// Signing region of S3 backups (else AWS_REGION, else us-east-1).
    #[arg(long, global = true)]
    s3_region: Option<String>,
    /// File with `access_key_id` and `secret_access_key` for S3 backups
    /// (else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, global = true)]
    s3_credentials: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Materialise a stopped node's views again from its log.
    Rebuild {
        /// The node's data directory (holds db/ and node-id).
        data_dir: PathBuf,
    },
    /// Verify a stopped node's data directory, or a backup (directory or
    /// s3://BUCKET/PREFIX):
    /// hash chains, bodies, and views against a replay.
    Audit {
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a node from a backup into a new data directory. Run it
    /// again after an interruption: it continues where it stopped.
    Restore {
        /// The backup: a directory or s3://BUCKET/PREFIX.
        #[arg(long)]
        from: PathBuf,
        /// The new node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Stop before the first entry later than this time (RFC 3339).
        #[arg(long, conflicts_with = "seq")]
        until: Option<String>,
        /// Stop after this entry: ORIGIN:SEQ (origin as 16 hex digits or node id).
        #[arg(long)]
        seq: Option<String>,
        /// Body reads at once (ranged reads of run objects or packs, neighbours joined; 1: one after the other).
        #[arg(long, default_value_t = tandem::backup::restore::DEFAULT_FETCHERS)]
        fetchers: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete what no restore point inside the kept window needs: write a
    /// base (the node's store as of the newest manifest older than the
    /// window), then remove the manifests, segments, bodies and bases only
    /// earlier points use. Needs delete rights the backup writer lacks.
    /// Live leases of restores and audits make it wait (--wait) or skip.
    Prune {
        /// The backup: a directory or s3://BUCKET/PREFIX.
        backup: PathBuf,
        /// Keep every restore point of this last stretch (e.g. 30d, 36h, 90m).
        #[arg(long)]
        keep_within: String,
        /// Wait this long for live leases before skipping the deletions.
        #[arg(long, default_value = "0s")]
        wait: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem-replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let s3 = S3Settings {
        endpoint: a.s3_endpoint,
        region: a.s3_region,
        credentials_file: a.s3_credentials,
    };
    match a.command {
        Cmd::Rebuild { data_dir } => {
            tandem_tools::start_again_with_huge_pages("tandem-replay");
            let n = tandem_tools::rebuild(&data_dir)?;
            println!("rebuilt the views from {n} entries");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { path, json } => {
            let scratch = tempfile::tempdir()?;
            let r = tandem_tools::audit_path(&path, scratch.path(), &s3)?;
            tandem_tools::print_audit(&r, json)?;
            Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Prune {
            backup,
            keep_within,
            wait,
            json,
        } => {
            let keep = tandem_tools::parse_duration(&keep_within)?;
            let wait = tandem_tools::parse_duration(&wait)?;
            let r = tandem_tools::prune(&backup, keep.as_millis() as u64, wait, &s3)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "pruned {}: base {}{}, oldest restore point {} ms; deleted {} manifests, {} segments, {} packs, {} bodies, {} base objects, {} lease objects",
                    backup.display(),
                    r.base,
                    if r.base_written { " (written now)" } else { "" },
                    r.oldest_point_ms,
                    r.manifests_deleted,
                    r.segments_deleted,
                    r.packs_deleted,
                    r.bodies_deleted,
                    r.base_objects_deleted,
                    r.lease_objects_deleted
                );
                for l in &r.skipped_for_leases {
                    println!("skipped the deletions: lease {l} is live");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            from,
            data_dir,
            until,
            seq,
            fetchers,
            json,
        } => {
            let stop = match (until, seq) {
                (Some(t), _) => Stop::Until {
                    ms: tandem_tools::parse_time(&t)?,
                },
                (None, Some(s)) => {
                    let (origin, seq) = tandem_tools::parse_seq(&s)?;
                    Stop::Seq { origin, seq }
                }
                (None, None) => Stop::Latest,
            };
            let bar = if std::io::stderr().is_terminal() {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} entries {per_sec} eta {eta}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                b
            } else {
                ProgressBar::hidden()
            };
            let r = tandem_tools::restore(&from, &data_dir, stop, &s3, fetchers, &mut |pos, target| {
                bar.set_length(target.max(pos));
                bar.set_position(pos);
            });
            bar.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "restored node {} to apply order {} ({} entries applied now, {} verified, {} bodies fetched, {} bytes; resumed at {})",
                    r.node_id, r.order, r.entries_applied, r.entries_verified, r.bodies_fetched, r.body_bytes, r.resumed_at
                );
                if let Some((o, s, t)) = &r.last {
                    println!("last entry applied: {o}:{s} at {t} ms");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
