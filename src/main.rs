//! The `tandem` binary: parse the command line, load the config, run.

fn main() -> std::process::ExitCode {
    tandem::cli::main()
}
