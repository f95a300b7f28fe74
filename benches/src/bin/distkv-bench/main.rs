//! `distkv-bench`: a YCSB-style load generator for a DistKV cluster, which can also drive
//! etcd and Redis with the same workload and report (`--store`, see `stores`).
//!
//! `C` concurrent clients (tokio tasks) send `Get`/`Put` requests to the nodes named by
//! `--targets` (and only those: it never discovers other members), for a bounded time
//! (`--duration`) and/or number of operations (`--ops`), and report throughput and
//! latency percentiles per operation kind. See `docs/load-generator.md`.
//!
//! Exit codes: 0 the run completed (failed requests are counted in the report, not fatal);
//! 2 bad usage (including an unbounded run or a non-loopback target without
//! `--allow-remote`); 3 a target could not be reached at start, or the preload failed;
//! 4 the report file could not be written.

mod cli;
mod runner;
mod stats;
mod stores;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use cli::{system_resolve, validate, Args, Config, Failure, OutputFormat};
use stats::Report;

/// Writes the report file, if asked for.
fn write_output(config: &Config, report: &Report) -> Result<(), Failure> {
    let Some((format, path)) = &config.output else {
        return Ok(());
    };
    let text = match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report.json()).map_err(|e| Failure {
                code: 4,
                message: format!("cannot encode the report: {e}"),
            })?;
            s.push('\n');
            s
        }
        OutputFormat::Csv => report.csv(),
    };
    std::fs::write(path, text).map_err(|e| Failure {
        code: 4,
        message: format!("cannot write the report to {path}: {e}"),
    })
}

/// Parses the command line; a usage error becomes one line (`--help` and `--version`
/// print as usual).
fn parse_args() -> Result<Args, Failure> {
    use clap::error::ErrorKind;
    Args::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => Failure::usage(cli::one_line_usage_error(&e.render().to_string())),
    })
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| validate(args, system_resolve));
    let result = result.and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure {
                code: 4,
                message: format!("cannot start the async runtime: {e}"),
            })?;
        let report = runtime.block_on(runner::run(config.clone()))?;
        print!("{}", report.text());
        write_output(&config, &report)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("distkv-bench: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
