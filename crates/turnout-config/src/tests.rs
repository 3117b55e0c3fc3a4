//! Data-driven tests: config text in, `Config` or every expected problem out.

use std::time::Duration;

use super::*;

/// The example config of SPEC.md, verbatim.
const SPEC_EXAMPLE: &str = r#"
[listen]
addr = "0.0.0.0:8080"            # data plane, HTTP/1.1 and h2c
header_timeout = "10s"           # an unfinished request head is cut off after this
# [listen.tls] addr = "0.0.0.0:8443", cert = "...", key = "..."   (HTTPS, ALPN h2 + http/1.1)

[runtime]
worker_threads = 2               # default: the number of cores; env TURNOUT_WORKER_THREADS overrides

[admin]
addr = "127.0.0.1:9901"
token = "env:TURNOUT_ADMIN_TOKEN"  # or a file: "file:/path"

[state]
dir = "./turnout-state"          # embedded store (default)
# backend = "etcd"
# endpoints = ["http://127.0.0.1:2379"]
# prefix = "/turnout/shop"

[slots.blue]                     # static upstreams; or leave empty and use [provision]
# with no saved state, blue is live at start when it has upstreams
upstreams = ["127.0.0.1:7001"]
[slots.green]
upstreams = ["127.0.0.1:7002"]

[provision]                      # optional: turnout starts each version itself
command = "./shop --port {port} --version {version}"
instances = 2
# or external infra: up = "...", down = "..." with TURNOUT_SLOT / TURNOUT_VERSION set

[health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
healthy = 2                      # consecutive passes to become healthy
unhealthy = 2                    # consecutive failures to become unhealthy

[verify]                         # smoke checks against the candidate before any traffic
checks = [{ path = "/", status = 200 }, { path = "/api/items", status = 200, body_contains = "items" }]
command = "./smoke.sh"            # optional; TURNOUT_TARGET=http://candidate

[shadow]                         # optional stage before the switch
duration = "2m"
sample = 1.0
methods = ["GET", "HEAD", "OPTIONS"]
ignore_headers = ["date", "x-request-id"]
ignore_json = ["/meta/generated_at"]
max_mismatch_rate = 0.01
max_latency_ratio_p99 = 1.5

[promote]
mode = "auto"                    # or "manual"; or "canary" with steps = [5, 25, 50, 100]

[bake]
duration = "5m"
interval = "1s"
max_error_rate = 0.01
max_p99 = "300ms"

[decommission]
delay = "1m"                     # standby kept this long after a good bake, then stopped

[notify]                         # optional: every event POSTed as JSON
webhooks = ["http://127.0.0.1:9000/turnout-events"]

[sessions]                       # optional: keep old sessions on the old slot through a cutover
cookie = "sid"
drain = "10m"

[hooks]                          # optional commands at stage edges, env says slot/version
pre_deploy = "./migrate.sh expand"
post_decommission = "./migrate.sh contract"
"#;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, "turnout.toml")
}

#[test]
fn spec_example_parses() {
    let config = parse(SPEC_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.runtime.worker_threads, Some(2));
    assert_eq!(
        config.admin.token,
        Some(TokenSource::Env("TURNOUT_ADMIN_TOKEN".into()))
    );
    assert_eq!(
        config.slots.get(SlotName::Blue).upstreams,
        ["127.0.0.1:7001"]
    );
    assert_eq!(
        config.slots.get(SlotName::Green).upstreams,
        ["127.0.0.1:7002"]
    );
    let provision = config.provision.unwrap();
    assert_eq!(provision.instances, 2);
    assert_eq!(provision.health_timeout, Duration::from_secs(60));
    assert_eq!(config.health, Some(Health::default()));
    let verify = config.verify.unwrap();
    assert_eq!(verify.checks.len(), 2);
    assert_eq!(
        verify.checks[1],
        Check {
            path: "/api/items".into(),
            status: 200,
            body_contains: Some("items".into())
        }
    );
    assert_eq!(verify.command.as_deref(), Some("./smoke.sh"));
    let shadow = config.shadow.unwrap();
    assert_eq!(shadow.ignore_headers, ["date", "x-request-id"]);
    assert_eq!(shadow.duration, Duration::from_secs(120));
    assert_eq!(config.promote, Promote::default());
    assert_eq!(config.bake.max_p99, Some(Duration::from_millis(300)));
    assert_eq!(config.bake.duration, Duration::from_secs(300));
    assert_eq!(config.decommission.delay, Duration::from_secs(60));
    assert_eq!(config.notify.unwrap().timeout, Duration::from_secs(5));
    let sessions = config.sessions.unwrap();
    assert_eq!(
        (sessions.cookie.as_str(), sessions.drain),
        ("sid", Duration::from_secs(600))
    );
    assert_eq!(
        config.hooks.pre_deploy.as_deref(),
        Some("./migrate.sh expand")
    );
    assert_eq!(config.hooks.on_rollback, None);
}

#[test]
fn empty_file_is_all_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.listen.addr.to_string(), "0.0.0.0:8080");
    assert_eq!(config.listen.upgrade_drain, Duration::from_secs(30));
    assert_eq!(config.admin.addr.to_string(), "127.0.0.1:9901");
    assert_eq!(
        config.state.dir,
        std::path::PathBuf::from("./turnout-state")
    );
    assert_eq!(config.state.prefix, "/turnout");
    assert_eq!(config.upstream.max_idle, 128);
    assert_eq!(config.health, None);
    assert_eq!(parse("# only a comment\n\n").unwrap(), Config::default());
}

#[test]
fn valid_configs() {
    type Case = (&'static str, fn(&Config) -> bool);
    let cases: &[Case] = &[
        ("[listen.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", |c| {
            c.listen.tls.as_ref().is_some_and(|t| t.addr.port() == 8443 && t.key.ends_with("k.pem"))
        }),
        ("listen.tls = { addr = \"0.0.0.0:443\", cert = \"c\", key = \"k\" }", |c| {
            c.listen.tls.as_ref().is_some_and(|t| t.addr.port() == 443)
        }),
        ("[promote]\nmode = \"canary\"\n", |c| c.promote.steps == [5, 25, 50, 100]),
        ("[promote]\nmode = \"canary\"\nsteps = [10, 100]\n", |c| c.promote.steps == [10, 100]),
        ("[promote]\nmode = \"manual\"", |c| c.promote.mode == PromoteMode::Manual),
        ("[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\", \"e2:2379\"]\nprefix = \"/t\"", |c| {
            c.state.backend == StateBackend::Etcd && c.state.endpoints.len() == 2
                && c.state.lease == std::time::Duration::from_secs(5)
        }),
        ("[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease = \"2s\"", |c| {
            c.state.lease == std::time::Duration::from_secs(2)
        }),
        ("[provision]\nup = \"./up.sh\"\ndown = \"./down.sh\"", |c| {
            c.provision.as_ref().is_some_and(|p| p.command.is_none() && p.instances == 1)
        }),
        ("[shadow]\nmethods = [\"GET\", \"POST\"]\nmirror_unsafe = true\nsample = 0\n", |c| {
            c.shadow.as_ref().is_some_and(|s| s.methods.len() == 2 && s.sample == 0.0)
        }),
        ("[shadow]\nignore_headers = [\"X-Request-Id\"]", |c| {
            c.shadow.as_ref().is_some_and(|s| s.ignore_headers == ["x-request-id"])
        }),
        ("[[verify.checks]]\npath = \"/a\"\n[[verify.checks]]\npath = \"/b\"\nstatus = 404\n", |c| {
            c.verify.as_ref().is_some_and(|v| v.checks.len() == 2 && v.checks[1].status == 404)
        }),
        ("[admin]\naddr = \"0.0.0.0:9901\"\ntoken = \"file:/run/token\"", |c| {
            c.admin.token == Some(TokenSource::File("/run/token".into()))
        }),
        ("slots.blue.upstreams = [\"[::1]:7001\", \"app.internal:80\"]\nslots.blue.version = \"v1\"", |c| {
            c.slots.blue.upstreams.len() == 2 && c.slots.blue.version.as_deref() == Some("v1")
        }),
        ("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"", |c| c.listen.addr.port() == 0),
        ("[bake]\nmax_p99_ratio = 2\nduration = \"1m30s\"\nrequire_traffic = true", |c| {
            c.bake.max_p99_ratio == Some(2.0) && c.bake.duration == Duration::from_secs(90) && c.bake.require_traffic
        }),
        ("[decommission]\ndelay = \"0s\"", |c| c.decommission.delay.is_zero()),
    ];
    for (text, check) in cases {
        match parse(text) {
            Ok(config) => assert!(check(&config), "{text}\n{config:#?}"),
            Err(e) => panic!("{text}\n{e}"),
        }
    }
}

/// Each case: config text and every problem expected, as (key, line, part of the message).
type Case = (&'static str, &'static [(&'static str, usize, &'static str)]);

fn check_cases(cases: &[Case]) {
    for (text, want) in cases {
        let errors = match parse(text) {
            Ok(config) => panic!("{text}\nparsed, expected errors: {config:#?}"),
            Err(errors) => errors,
        };
        let got: Vec<_> = errors
            .errors
            .iter()
            .map(|e| (e.key.as_str(), e.line))
            .collect();
        let expected: Vec<_> = want.iter().map(|(k, l, _)| (*k, Some(*l))).collect();
        assert_eq!(got, expected, "{text}\n{errors}");
        for (error, (_, _, part)) in errors.errors.iter().zip(want.iter()) {
            assert!(
                error.message.contains(part),
                "{text}\nwant {part:?} in:\n{errors}"
            );
        }
    }
}

#[test]
fn invalid_toml_is_one_error_with_its_line() {
    let cases: &[Case] = &[
        (
            "[listen]\naddr = 0.0.0.0:8080\n",
            &[("", 2, "invalid TOML")],
        ),
        (
            "[health]\npath = \"/x\"\npath = \"/y\"\n",
            &[("", 3, "duplicate key")],
        ),
        ("a = 1\n\n[bake\n", &[("", 3, "invalid TOML")]),
        ("x = \"unterminated\ny = 1\n", &[("", 1, "invalid TOML")]),
    ];
    check_cases(cases);
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let text = "\
[listen]
adr = \"0.0.0.0:8080\"
[helth]
interval = \"1s\"
[bake]
duraton = \"5m\"
colour = \"blue\"
[slots.blu]
upstreams = []
[verify]
checks = [{ path = \"/\", stauts = 200 }]
";
    check_cases(&[(
        text,
        &[
            ("listen.adr", 2, "did you mean \"addr\"?"),
            ("helth", 3, "did you mean \"health\"?"),
            ("bake.duraton", 6, "did you mean \"duration\"?"),
            (
                "bake.colour",
                7,
                "Valid keys here: duration, interval, window, max_error_rate",
            ),
            ("slots.blu", 8, "did you mean \"blue\"?"),
            ("verify.checks[0].stauts", 11, "did you mean \"status\"?"),
        ],
    )]);
    let errors = parse("[bake]\ncolour = 1\n").unwrap_err();
    assert!(
        !errors.errors[0].message.contains("did you mean"),
        "{errors}"
    );
}

#[test]
fn bad_durations() {
    check_cases(&[
        ("[health]\ninterval = \"5 x\"", &[("health.interval", 2, "invalid duration \"5 x\": expected a number and a unit, e.g. \"500ms\", \"30s\", \"10m\"")]),
        ("[health]\ninterval = \"5\"", &[("health.interval", 2, "did you mean \"5s\"?")]),
        ("[bake]\nduration = \"-1s\"", &[("bake.duration", 2, "expected a number and a unit")]),
        ("[listen]\nheader_timeout = \"\"", &[("listen.header_timeout", 2, "invalid duration \"\"")]),
        ("[listen]\nheader_timeout = 10", &[("listen.header_timeout", 2, "expected a duration string, e.g. \"30s\", found an integer")]),
        ("[health]\ninterval = \"0s\"\ntimeout = \"0ms\"", &[("health.interval", 2, "greater than zero"), ("health.timeout", 3, "greater than zero")]),
        ("[upstream]\nconnect_timeout = \"0s\"", &[("upstream.connect_timeout", 2, "greater than zero")]),
        ("[hooks]\ntimeout = \"5min\"", &[("hooks.timeout", 2, "the units are ms, s, m and h")]),
    ]);
}

#[test]
fn wrong_types() {
    check_cases(&[
        (
            "listen = 5",
            &[(
                "listen",
                1,
                "expected a table, e.g. [listen], found an integer",
            )],
        ),
        (
            "[runtime]\nworker_threads = \"2\"",
            &[(
                "runtime.worker_threads",
                2,
                "expected a whole number, found a string",
            )],
        ),
        (
            "[runtime]\nworker_threads = 0",
            &[(
                "runtime.worker_threads",
                2,
                "out of range: use a number from 1 to 4096",
            )],
        ),
        (
            "[health]\nhealthy = 0\nunhealthy = 1.5",
            &[
                ("health.healthy", 2, "from 1 to 1000"),
                ("health.unhealthy", 3, "found a float"),
            ],
        ),
        (
            "[bake]\nrequire_traffic = \"yes\"",
            &[("bake.require_traffic", 2, "expected true or false")],
        ),
        (
            "[bake]\nmax_error_rate = 5",
            &[("bake.max_error_rate", 2, "a number from 0 to 1")],
        ),
        (
            "[shadow]\nmax_latency_ratio_p99 = 0",
            &[("shadow.max_latency_ratio_p99", 2, "greater than 0")],
        ),
        (
            "[shadow]\nmethods = \"GET\"",
            &[("shadow.methods", 2, "expected an array of strings")],
        ),
        (
            "[shadow]\nmethods = [\"GET\", 1, \"get\"]",
            &[
                ("shadow.methods[1]", 2, "expected a string"),
                ("shadow.methods[2]", 2, "upper case"),
            ],
        ),
        (
            "[verify]\nchecks = [\"/\"]",
            &[("verify.checks[0]", 2, "expected a table")],
        ),
        (
            "[verify]\nchecks = [{ status = 99 }]",
            &[
                ("verify.checks[0]", 2, "missing key path"),
                ("verify.checks[0].status", 2, "from 100 to 599"),
            ],
        ),
        (
            "[health]\npath = \"healthz\"",
            &[("health.path", 2, "must start with '/'")],
        ),
        (
            "[hooks]\npre_switch = \" \"",
            &[("hooks.pre_switch", 2, "is empty")],
        ),
        (
            "[listen]\naddr = \"localhost:8080\"",
            &[("listen.addr", 2, "expected IP:PORT")],
        ),
        (
            "[state]\nbackend = \"redis\"",
            &[("state.backend", 2, "use \"embedded\" or \"etcd\"")],
        ),
        (
            "[notify]\nwebhooks = [\n  \"http://ok\",\n  \"ftp://x\",\n]",
            &[("notify.webhooks[1]", 4, "http:// or https://")],
        ),
    ]);
}

#[test]
fn bad_upstreams() {
    let text = "\
[slots.blue]
upstreams = [
  \"127.0.0.1:7001\",
  \"http://127.0.0.1:7002\",
  \"127.0.0.1\",
  \"127.0.0.1:0\",
  \"127.0.0.1:7001\",
]
[slots.green]
upstreams = [\":7002\"]
";
    check_cases(&[(
        text,
        &[
            ("slots.blue.upstreams[1]", 4, "has a scheme"),
            ("slots.blue.upstreams[2]", 5, "has no port"),
            ("slots.blue.upstreams[3]", 6, "invalid port"),
            ("slots.blue.upstreams[4]", 7, "listed twice"),
            ("slots.green.upstreams[0]", 10, "invalid host"),
        ],
    )]);
}

#[test]
fn token_forms() {
    check_cases(&[
        (
            "[admin]\ntoken = \"hunter2\"",
            &[("admin.token", 2, "\"env:NAME\"")],
        ),
        (
            "[admin]\ntoken = \"env:\"",
            &[("admin.token", 2, "\"file:PATH\"")],
        ),
        (
            "[sessions]\ncookie = \"sid\"\nsecret = \"s3cr3t\"",
            &[("sessions.secret", 3, "\"env:NAME\"")],
        ),
        (
            "[admin]\naddr = \"0.0.0.0:9901\"",
            &[("admin.addr", 2, "without a token")],
        ),
    ]);
    let errors =
        parse("[admin]\ntoken = \"hunter2\"\n[sessions]\ncookie = \"sid\"\nsecret = 12345")
            .unwrap_err();
    let shown = errors.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("12345"),
        "{shown}"
    );
}

#[test]
fn canary_steps() {
    check_cases(&[
        (
            "[promote]\nmode = \"canary\"\nsteps = [50, 25, 100]",
            &[("promote.steps", 3, "strictly increasing")],
        ),
        (
            "[promote]\nmode = \"canary\"\nsteps = [5, 50]",
            &[("promote.steps", 3, "ending at 100")],
        ),
        (
            "[promote]\nmode = \"canary\"\nsteps = [5, 5, 100]",
            &[("promote.steps", 3, "strictly increasing")],
        ),
        (
            "[promote]\nmode = \"canary\"\nsteps = []",
            &[("promote.steps", 3, "ending at 100")],
        ),
        (
            "[promote]\nmode = \"canary\"\nsteps = [0, 100]",
            &[("promote.steps[0]", 3, "from 1 to 100")],
        ),
        (
            "[promote]\nmode = \"canary\"\nsteps = [50, 101]",
            &[
                ("promote.steps[1]", 3, "from 1 to 100"),
                ("promote.steps", 3, "ending at 100"),
            ],
        ),
        (
            "[promote]\nsteps = [5, 100]",
            &[("promote.steps", 2, "set mode = \"canary\"")],
        ),
        (
            "[promote]\nmode = \"blue-green\"",
            &[("promote.mode", 2, "\"auto\", \"manual\" or \"canary\"")],
        ),
    ]);
}

#[test]
fn cross_key_rules() {
    check_cases(&[
        (
            "[provision]\ninstances = 2",
            &[("provision", 1, "nothing to provision")],
        ),
        (
            "[provision]\ncommand = \"./a\"\nup = \"./up\"\ndown = \"./down\"",
            &[("provision.up", 3, "not both")],
        ),
        (
            "[provision]\nup = \"./up\"",
            &[("provision.up", 2, "needs down")],
        ),
        (
            "[state]\nbackend = \"etcd\"",
            &[("state.endpoints", 1, "needs endpoints")],
        ),
        (
            "[state]\nendpoints = [\"http://e:2379\"]",
            &[("state.endpoints", 2, "set backend = \"etcd\"")],
        ),
        (
            "[state]\nuser = \"u\"",
            &[("state.user", 2, "set backend = \"etcd\"")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]",
            &[("state.endpoints", 3, "https:// endpoints need ca")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nca = \"ca.pem\"",
            &[("state.ca", 4, "give the endpoints as https://")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\nca = \"ca.pem\"\ncert = \"c.pem\"",
            &[("state.cert", 5, "cert needs key")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\npassword = \"env:P\"",
            &[("state.password", 4, "password needs user")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nuser = \"u\"",
            &[("state.user", 4, "user needs password")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"https://a:2379\", \"b:2379\"]\nca = \"ca.pem\"",
            &[("state.endpoints", 3, "mix https://")],
        ),
        (
            "[state]\nlease = \"10s\"",
            &[("state.lease", 2, "set backend = \"etcd\"")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease = \"1s\"",
            &[("state.lease", 4, "too short")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease = \"2m\"",
            &[("state.lease", 4, "60s or less")],
        ),
        (
            "[state]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease = \"2500ms\"",
            &[("state.lease", 4, "whole seconds")],
        ),
        (
            "[listen.tls]\nkey = \"k\"",
            &[("listen.tls", 1, "missing key cert")],
        ),
        (
            "[sessions]\ndrain = \"1m\"",
            &[("sessions", 1, "missing key cookie")],
        ),
        (
            "[listen]\naddr = \"0.0.0.0:9901\"",
            &[(
                "listen.addr",
                2,
                "admin.addr (127.0.0.1:9901) uses the same port",
            )],
        ),
        (
            "[listen.tls]\naddr = \"0.0.0.0:8080\"\ncert = \"c\"\nkey = \"k\"",
            &[("listen.tls.addr", 2, "listen.addr (0.0.0.0:8080)")],
        ),
        (
            "[shadow]\nmethods = [\"GET\", \"POST\"]",
            &[("shadow.methods[1]", 2, "mirror_unsafe = true")],
        ),
    ]);
}

#[test]
fn three_problems_in_one_file_are_all_reported() {
    let text = "\
[listen]
addr = \"0.0.0.0:8080\"

[health]
interval = \"5 x\"
timout = \"1s\"

[slots.blue]
upstreams = [\"http://127.0.0.1:7001\"]
";
    let errors = parse(text).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "turnout.toml:5: health.interval: invalid duration \"5 x\": expected a number and a unit, \
         e.g. \"500ms\", \"30s\", \"10m\"; the units are ms, s, m and h\n\
         turnout.toml:6: health.timout: unknown key \"timout\"; did you mean \"timeout\"? Valid \
         keys here: path, interval, timeout, healthy, unhealthy, failover\n\
         turnout.toml:9: slots.blue.upstreams[0]: upstream \"http://127.0.0.1:7001\" has a \
         scheme: write only host:port, e.g. \"127.0.0.1:7001\""
    );
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(&path, "[health]\ninterval = \"2s\"\n").unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.health.unwrap().interval, Duration::from_secs(2));

    std::fs::write(&path, "[health]\ninterval = 2\n").unwrap();
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(errors.origin, path.display().to_string());
    assert_eq!(errors.errors[0].line, Some(2));

    let missing = dir.path().join("nope.toml");
    let errors = Config::load(&missing).unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    let error = &errors.errors[0];
    assert_eq!((error.key.as_str(), error.line), ("", None));
    assert!(
        error.message.contains(&missing.display().to_string()),
        "{errors}"
    );
    assert!(error.message.contains("No such file"), "{errors}");
}

#[test]
fn never_panics_on_odd_input() {
    let inputs = [
        "\u{feff}",
        "\0",
        "[[listen]]\naddr = 1",
        "slots = []",
        "[slots]\nblue = \"x\"",
        "[verify]\nchecks = { path = \"/\" }",
        "[runtime]\nworker_threads = 99999999999999999999",
        "[runtime]\nworker_threads = 0x10",
        "[bake]\nmax_error_rate = nan",
        "[bake]\nmax_p99_ratio = inf",
        "[bake]\nmax_error_rate = 1979-05-27",
        "[shadow]\nmethods = [[\"GET\"]]",
        "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "[health]\ninterval = \"\u{1F40C}s\"",
        "[health]\ninterval = \"18446744073709551615h\"",
        "[\"\"]\n\"\" = 1",
    ];
    for text in inputs {
        let _ = parse(text);
    }
    // Every cut of a valid file parses or fails cleanly.
    for end in (0..SPEC_EXAMPLE.len()).filter(|i| SPEC_EXAMPLE.is_char_boundary(*i)) {
        let _ = parse(&SPEC_EXAMPLE[..end]);
    }
    assert_eq!(
        parse("[runtime]\nworker_threads = 0x10")
            .unwrap()
            .runtime
            .worker_threads,
        Some(16)
    );
}

#[test]
fn limits_and_failover_keys() {
    let c = parse("[listen]\naddr = \"127.0.0.1:0\"\n").unwrap();
    assert_eq!(c.listen.max_connections, 10_000);
    assert_eq!(c.listen.max_body, None);
    let c =
        parse("[listen]\nmax_connections = 0\nmax_body = \"10MB\"\n[health]\nfailover = true\n")
            .unwrap();
    assert_eq!(c.listen.max_connections, 0);
    assert_eq!(c.listen.max_body, Some(10_000_000));
    assert!(c.health.unwrap().failover);
    let c = parse("[listen]\nmax_body = 2048\n[health]\n").unwrap();
    assert_eq!(c.listen.max_body, Some(2048));
    assert!(!c.health.unwrap().failover);
    for bad in [
        "[listen]\nmax_body = \"10\"",
        "[listen]\nmax_body = 0",
        "[listen]\nmax_body = true",
        "[listen]\nmax_connections = -1",
        "[health]\nfailover = \"yes\"",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn upstream_tls() {
    let off = parse("").unwrap();
    assert_eq!(off.upstream.tls, None);
    let on = parse("[upstream]\ntls = true\nca = \"ca.pem\"\nserver_name = \"api.internal\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        on.upstream.tls,
        Some(UpstreamTls {
            ca: "ca.pem".into(),
            server_name: Some("api.internal".into()),
        })
    );
    let no_name = parse("[upstream]\ntls = true\nca = \"ca.pem\"\n").unwrap();
    assert_eq!(no_name.upstream.tls.unwrap().server_name, None);
    for (text, expected) in [
        ("[upstream]\ntls = true\n", "missing key ca"),
        (
            "[upstream]\nca = \"ca.pem\"\n",
            "ca applies only with tls = true",
        ),
        (
            "[upstream]\ntls = false\nserver_name = \"x\"\n",
            "server_name applies only with tls = true",
        ),
        ("[upstream]\ntls = \"yes\"\n", "true or false"),
    ] {
        let errors = parse(text).unwrap_err().to_string();
        assert!(errors.contains(expected), "{text:?}: {errors}");
    }
}

#[test]
fn durations_beyond_ten_years_are_refused_in_every_key() {
    // Each of these passed check-config and then panicked the router when added to a
    // clock ("overflow when adding durations").
    let huge = "18446744073709551615s";
    for (section, key) in [
        ("listen", "header_timeout"),
        ("listen", "upgrade_drain"),
        ("upstream", "connect_timeout"),
        ("upstream", "response_timeout"),
        ("upstream", "idle_timeout"),
        ("health", "interval"),
        ("health", "timeout"),
        ("bake", "duration"),
        ("bake", "interval"),
        ("bake", "window"),
        ("decommission", "delay"),
        ("hooks", "timeout"),
    ] {
        let text = format!("[{section}]\n{key} = \"{huge}\"\n");
        let err = parse(&text).expect_err(&text).to_string();
        assert!(
            err.contains(&format!("{section}.{key}")) && err.contains("87600h"),
            "{section}.{key}: {err}"
        );
        // The longest one allowed is accepted.
        let text = format!("[{section}]\n{key} = \"87600h\"\n");
        assert!(parse(&text).is_ok(), "{text}");
    }
}
