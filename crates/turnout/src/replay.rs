//! `turnout replay`: the arguments, the targets (a slot name is asked of the running
//! router), and the printing; the replay itself — reading and merging the files, timing,
//! sending, comparing — is `turnout_shadow::replay`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use hyper::Method;
use turnout_core::SlotName;
use turnout_shadow::goreplay;
use turnout_shadow::replay::{Input, Notify, OutFile, ReplayOptions, ReplayOutcome, Target};
use turnout_shadow::CompareOptions;

use crate::cli::ReplayArgs;
use crate::client::AdminClient;
use crate::error::UsageError;
use crate::out::out;

/// Where requests go, as typed.
#[derive(Clone, Debug, PartialEq)]
enum TargetArg {
    /// `host:port`.
    Url(String),
    Slot(SlotName),
}

fn parse_target(flag: &str, text: &str) -> Result<TargetArg, UsageError> {
    if let Ok(slot) = text.parse::<SlotName>() {
        return Ok(TargetArg::Slot(slot));
    }
    if text.starts_with("https://") {
        return Err(UsageError(format!(
            "{flag} {text}: https is not supported yet — replay speaks plain HTTP/1.1; give http://host:port (e.g. of an instance behind the TLS terminator)"
        )));
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(UsageError(format!(
            "{flag} {text:?}: expected http://host:port, blue or green"
        )));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.parse::<hyper::http::uri::Authority>().is_ok();
    if !valid {
        return Err(UsageError(format!(
            "{flag} {text:?}: expected http://host:port with no path (the recorded paths are sent as they are)"
        )));
    }
    Ok(TargetArg::Url(authority.to_owned()))
}

async fn resolve(
    arg: &TargetArg,
    admin: &mut Option<anyhow::Result<AdminClient>>,
    make: &mut Option<impl FnOnce() -> anyhow::Result<AdminClient>>,
) -> anyhow::Result<Target> {
    match arg {
        TargetArg::Url(a) => Ok(Target {
            authority: a.clone(),
            label: format!("http://{a}"),
        }),
        TargetArg::Slot(slot) => {
            if admin.is_none() {
                *admin = make.take().map(|f| f());
            }
            let client = match admin {
                Some(Ok(c)) => c,
                Some(Err(e)) => bail!("{e:#}"),
                None => bail!("no admin API to ask for slot {slot}'s upstreams"),
            };
            let status = client
                .call(Method::GET, "/api/v1/status", None)
                .await
                .with_context(|| format!("asking the router for slot {slot}'s upstreams"))?;
            let ups = status["slots"][slot.as_str()]["upstreams"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let healthy = ups
                .iter()
                .find(|u| u["healthy"] == true)
                .and_then(|u| u["addr"].as_str());
            match healthy {
                Some(addr) => Ok(Target {
                    authority: addr.to_owned(),
                    label: format!("{slot} (http://{addr})"),
                }),
                None if ups.is_empty() => bail!("slot {slot} has no upstreams to replay to"),
                None => bail!(
                    "slot {slot} has no healthy upstream ({} checked unhealthy); see `turnout status`",
                    ups.len()
                ),
            }
        }
    }
}

/// Runs `turnout replay`. `admin` makes the admin API's client, needed only for a slot
/// name as target.
pub fn run(
    args: &ReplayArgs,
    admin: impl FnOnce() -> anyhow::Result<AdminClient>,
) -> anyhow::Result<ExitCode> {
    if args.timeout.is_zero() {
        return Err(UsageError("--timeout must be more than 0".into()).into());
    }
    if args.max_body > goreplay::MAX_RECORD as u64 {
        return Err(UsageError(format!(
            "--max-body {} is over the {} bytes a record may hold",
            args.max_body,
            goreplay::MAX_RECORD
        ))
        .into());
    }
    let target = parse_target("--target", &args.target)?;
    let compare_with = args
        .compare_with
        .as_deref()
        .map(|t| parse_target("--compare-with", t))
        .transpose()?;
    let mut inputs = Vec::new();
    for path in &args.files {
        inputs.push(Input::open(path).with_context(|| format!("cannot read {}", path.display()))?);
    }
    let out_file = match &args.out {
        Some(p) => {
            Some(OutFile::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (mut client, mut make) = (None, Some(admin));
        let target = resolve(&target, &mut client, &mut make).await?;
        let other = match &compare_with {
            Some(t) => Some(resolve(t, &mut client, &mut make).await?),
            None => None,
        };
        let options = ReplayOptions {
            speed: args.speed,
            max_gap: args.max_gap,
            concurrency: args.concurrency as usize,
            timeout: args.timeout,
            max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
            rewrite_host: args.rewrite_host,
            compare: CompareOptions {
                ignore_headers: args.ignore_headers.clone(),
                ignore_json: args.ignore_json.clone(),
            },
        };
        let notify: Notify = Arc::new(|line: &str| eprintln!("turnout: {line}"));
        let outcome =
            turnout_shadow::replay::replay(inputs, target, other, out_file, &options, notify)
                .await?;
        conclude(args, &outcome)
    })
}

/// Prints the summary and the report, writes `--report`, and picks the exit code.
fn conclude(args: &ReplayArgs, o: &ReplayOutcome) -> anyhow::Result<ExitCode> {
    let (read, sent) = (o.read, o.sent);
    let report = o.report();
    out(&format!(
        "replayed {} requests from {} file(s) to {} in {:.1}s: {} answered, {} without a response",
        sent.sent,
        o.files.len(),
        o.target.label,
        o.elapsed.as_secs_f64(),
        sent.answered,
        sent.failed
    ))?;
    out(&format!(
        "compared {} with {}; {} sent with nothing to compare with",
        sent.compared,
        o.against(),
        sent.not_compared
    ))?;
    out(&format!(
        "skipped: {} malformed records, {} requests with a truncated body, {} replayed-response records (type 3); {} responses with no request",
        read.malformed + sent.malformed_responses,
        read.truncated,
        read.replayed_records,
        read.orphan_responses
    ))?;
    if sent.not_written > 0 {
        out(&format!(
            "{} responses were not written to --out: a line of theirs is the separator 🐵🙈🙉",
            sent.not_written
        ))?;
    }
    out(report.render_text().trim_end())?;

    let mut errors: Vec<String> = Vec::new();
    if let Some(path) = &args.report {
        let html = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
        let text = if html {
            o.html_report(&report)
        } else {
            o.json_report(&report)?
        };
        match std::fs::write(path, text) {
            Ok(()) => out(&format!("report written to {}", path.display()))?,
            Err(e) => errors.push(format!(
                "cannot write the report to {}: {e}",
                path.display()
            )),
        }
    }
    if let (None, Some(p)) = (&o.out_error, &args.out) {
        out(&format!(
            "replayed requests and responses written to {}",
            p.display()
        ))?;
    }
    errors.extend(o.problems());
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_and_targets() {
        use crate::cli::parse_speed;
        use turnout_shadow::replay::Speed;
        assert_eq!(parse_speed("1"), Ok(Speed::Times(1.0)));
        assert_eq!(parse_speed("2x"), Ok(Speed::Times(2.0)));
        assert_eq!(parse_speed("0.5"), Ok(Speed::Times(0.5)));
        assert_eq!(parse_speed("0"), Ok(Speed::Max));
        assert_eq!(parse_speed("MAX"), Ok(Speed::Max));
        for bad in ["-1", "fast", "inf", "NaN", "", "1e-300", "1e300", "0.0001"] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        // Durations on the command line: as in the config, at most 10 years.
        assert!(turnout_core::units::parse_duration("87600h").is_ok());
        let err = turnout_core::units::parse_duration("1000000h").unwrap_err();
        assert!(err.contains("87600h"), "{err}");
        assert_eq!(
            parse_target("--target", "http://127.0.0.1:8080/").ok(),
            Some(TargetArg::Url("127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse_target("--target", "green").ok(),
            Some(TargetArg::Slot(SlotName::Green))
        );
        let https = parse_target("--target", "https://x:443").unwrap_err().0;
        assert!(https.contains("https is not supported yet"), "{https}");
        for bad in ["http://x:1/api", "x:1", "http://", "http://a b:1"] {
            assert!(parse_target("--target", bad).is_err(), "{bad}");
        }
    }
}
