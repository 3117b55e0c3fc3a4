//! `turnout capture`: the router streams live exchanges as GoReplay records
//! (`POST /api/v1/capture`), and this command writes them to a file where it runs, with
//! `turnout_shadow::capture::CaptureFiles` (records checked, written byte for byte, rotated
//! without splitting one). On Ctrl-C (or SIGTERM) the file is finished cleanly (the gzip
//! trailer written) with every whole record received. This module checks the arguments,
//! talks to the router, and prints.

use std::process::ExitCode;

use hyper::Method;
use serde_json::json;
use turnout_shadow::capture::CaptureFiles;

use crate::cli::CaptureArgs;
use crate::client::{AdminClient, StreamFrame};
use crate::error::UsageError;
use crate::out::out;

/// What the router said at the end (its trailers).
#[derive(Default)]
struct Final {
    exchanges: Option<u64>,
    dropped: Option<u64>,
    skipped: Option<u64>,
    end: Option<String>,
}

impl Final {
    fn from_trailers(t: &hyper::HeaderMap) -> Final {
        let num = |name: &str| {
            t.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        Final {
            exchanges: num(turnout_admin::TRAILER_EXCHANGES),
            dropped: num(turnout_admin::TRAILER_DROPPED),
            skipped: num(turnout_admin::TRAILER_SKIPPED),
            end: t
                .get(turnout_admin::TRAILER_END)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    match term {
        Ok(mut term) => tokio::select! {
            _ = ctrl_c => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = ctrl_c.await;
            "Ctrl-C"
        }
    }
}

/// Runs `turnout capture`.
pub async fn run(client: &AdminClient, args: &CaptureArgs) -> anyhow::Result<ExitCode> {
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(UsageError(
            "--duration must be more than 0 (leave it out to capture until Ctrl-C)".into(),
        )
        .into());
    }
    if args.max_body > turnout_admin::MAX_CAPTURE_BODY {
        return Err(UsageError(format!(
            "--max-body {} is over the {} a capture keeps of a body",
            turnout_core::units::format_size(args.max_body),
            turnout_core::units::format_size(turnout_admin::MAX_CAPTURE_BODY)
        ))
        .into());
    }
    // The file first: a path that cannot be written fails before the router starts.
    let mut files = CaptureFiles::create(&args.out, args.rotate_size)?;
    let mut body = json!({ "sample": args.sample, "max_body": args.max_body });
    if let Some(d) = args.duration {
        body["duration_ms"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    }
    let mut stream = match client
        .stream(Method::POST, "/api/v1/capture", Some(body))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            files.discard();
            return Err(e);
        }
    };
    // Scripts (and tests) wait for this line: the router taps traffic from here on.
    out(&format!(
        "capturing to {} ({}; sample {}, bodies up to {})",
        args.out.display(),
        match args.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".into(),
        },
        args.sample,
        turnout_core::units::format_size(args.max_body)
    ))?;

    let mut fin: Option<Final> = None;
    let mut stopped_by: Option<&str> = None;
    let mut failure: Option<anyhow::Error> = None;
    let signal = interrupted();
    tokio::pin!(signal);
    loop {
        let frame = tokio::select! {
            by = &mut signal => { stopped_by = Some(by); break; }
            f = stream.next() => f,
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            Some(Ok(StreamFrame::Trailers(t))) => fin = Some(Final::from_trailers(&t)),
            Some(Ok(StreamFrame::Data(data))) => match files.push(&data) {
                Ok(rejected) => {
                    for r in rejected {
                        eprintln!(
                            "turnout: the router's stream at byte {}: {}; not written",
                            r.offset, r.why
                        );
                    }
                }
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            },
        }
    }
    // Hang up first: the router stops tapping at once.
    drop(stream);
    let finished = files.finish();

    let counts = files.counts();
    let exchanges = counts.exchanges();
    let names: Vec<String> = files
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    out(&format!(
        "captured {} exchanges: {} records ({} requests, {} responses{}) written to {}",
        exchanges,
        counts.records(),
        counts.requests,
        counts.responses,
        if counts.other > 0 {
            format!(", {} other", counts.other)
        } else {
            String::new()
        },
        if names.len() == 1 {
            names[0].clone()
        } else {
            format!("{} files: {}", names.len(), names.join(", "))
        }
    ))?;
    if files.pending() > 0 {
        out(&format!(
            "an incomplete record at the end ({} bytes) was not written",
            files.pending()
        ))?;
    }
    if counts.bad > 0 {
        out(&format!(
            "{} records from the router did not read back and were not written (see above)",
            counts.bad
        ))?;
    }
    match (&fin, stopped_by) {
        (Some(f), _) => {
            out(&format!(
                "dropped by the router: {} (the capture did not keep up with the traffic); skipped: {} (a payload line is the separator 🐵🙈🙉); ended: {}",
                f.dropped.map_or("?".into(), |n| n.to_string()),
                f.skipped.map_or("?".into(), |n| n.to_string()),
                f.end.as_deref().unwrap_or("?")
            ))?;
            if let Some(n) = f.exchanges.filter(|&n| n != exchanges) {
                out(&format!(
                    "note: the router sent {n} exchanges, {exchanges} were written"
                ))?;
            }
        }
        (None, Some(by)) => out(&format!(
            "stopped by {by}; exchanges the router dropped (if any) are in its log"
        ))?,
        (None, None) => {
            out("the router sent no final counts; exchanges it dropped (if any) are in its log")?
        }
    }
    finished?;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "the capture stopped early; {} holds what was received",
            args.out.display()
        )));
    }
    Ok(ExitCode::SUCCESS)
}
