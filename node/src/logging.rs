//! Logging set-up through tracing: `RUST_LOG` when set, else the configured level; text
//! or JSON lines on stderr, coloured only when stderr is a terminal.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Parses a log filter (`info`, `warn,distkv_node=debug`), more strictly than
/// [`EnvFilter`]: a directive without `=` must be a level. tracing would read a bare word
/// such as `loud` as a target enabled at every level, and the node would then log
/// nothing of its own; a target is written `TARGET=LEVEL`.
pub fn parse_filter(spec: &str) -> Result<EnvFilter, String> {
    const HINT: &str = "use a level (trace, debug, info, warn, error, off) or TARGET=LEVEL directives separated by commas, e.g. \"info,distkv_node=debug\"";
    if spec.trim().is_empty() {
        return Err(format!("empty; {HINT}"));
    }
    for directive in spec.split(',').map(str::trim) {
        let is_bare_word = !directive.contains(['=', '[']);
        if is_bare_word && !directive.is_empty() && directive.parse::<LevelFilter>().is_err() {
            return Err(format!("{directive:?} is not a level; {HINT}"));
        }
    }
    EnvFilter::builder()
        .parse(spec)
        .map_err(|e| format!("not a log filter ({e}); {HINT}"))
}

/// The filter to log with: `rust_log` (the value of `RUST_LOG`) when it is set and valid,
/// else `level` (already validated by the configuration). The second value is a warning
/// for the operator when `RUST_LOG` is set but unusable, and so ignored.
pub fn choose_filter(level: &str, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let configured = || parse_filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    match rust_log.filter(|s| !s.trim().is_empty()) {
        None => (configured(), None),
        Some(spec) => match parse_filter(spec) {
            Ok(filter) => (filter, None),
            Err(why) => (
                configured(),
                Some(format!(
                    "RUST_LOG = {spec:?} is ignored, logging at log.level = {level:?} instead: {why}"
                )),
            ),
        },
    }
}

/// Installs the global subscriber. Later calls do nothing. Returns a warning for the
/// operator when `RUST_LOG` is set but not a usable filter.
pub fn init(config: &LogConfig) -> Option<String> {
    let rust_log = std::env::var_os("RUST_LOG").map(|v| v.to_string_lossy().into_owned());
    let (filter, warning) = choose_filter(&config.level, rust_log.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    warning
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_are_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,distkv_node=debug",
            "distkv_node::server=trace",
            "info,",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_bare_word_or_a_bad_level_is_refused() {
        for bad in ["loud", "", "  ", "info,verbose", "distkv_node=loud"] {
            let why = parse_filter(bad).err().unwrap_or_else(|| panic!("{bad:?}"));
            assert!(why.contains("TARGET=LEVEL"), "{bad:?}: {why}");
        }
        assert!(parse_filter("loud").unwrap_err().contains("\"loud\""));
    }

    #[test]
    fn an_invalid_rust_log_is_reported_and_ignored() {
        let (filter, warning) = choose_filter("debug", Some("loud"));
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("RUST_LOG") && warning.contains("loud"),
            "{warning}"
        );
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::DEBUG));

        let (filter, warning) = choose_filter("debug", Some("error"));
        assert_eq!(
            (filter.max_level_hint(), warning),
            (Some(LevelFilter::ERROR), None)
        );
        let (filter, warning) = choose_filter("warn", Some(""));
        assert_eq!(
            (filter.max_level_hint(), warning),
            (Some(LevelFilter::WARN), None)
        );
    }
}
