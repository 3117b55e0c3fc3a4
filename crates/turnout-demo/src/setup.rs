//! The demo's work directory: the generated config (free loopback ports, the demo service
//! started by `[provision]`), the admin token beside it, and quoting for the commands it
//! prints.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use turnout_pipeline::commands::shell_quote;

/// The generated config: free loopback ports, the token in a file beside it, and the demo
/// service started by `[provision]` (a version whose name ends in `-bad` fails 30% of
/// its API requests).
pub fn config_text(app: &Path, dir: &Path, data: u16, admin: u16) -> String {
    let app = shell_quote(&app.display().to_string()).into_owned();
    let db = shell_quote(&dir.join("shop.db").display().to_string()).into_owned();
    let command = format!(
        "case {{version}} in *-bad) x='--fail-rate 0.3 --fail-after 10s';; *-price) x='--price-as-string';; *) x='';; esac; exec {app} --port {{port}} --version {{version}} --db {db} $x"
    );
    format!(
        r#"# Written by `turnout demo`. Run this router again with:
#   turnout serve --config turnout.toml     (relative paths are relative to this file)

[listen]
addr = "127.0.0.1:{data}"

[admin]
addr = "127.0.0.1:{admin}"
token = "file:admin-token"

[state]
dir = "state"

[provision]
# Two instances of the demo service per version; one named *-bad starts failing 30% of
# its API requests 10s after it started (after its shadow test: a version that goes bad
# under load), one named *-price sends prices as strings ("2.50" instead of 2.5).
command = {command}
instances = 2
health_timeout = "30s"

[health]
path = "/healthz"
interval = "500ms"
timeout = "500ms"
healthy = 2
unhealthy = 2

[verify]
checks = [{{ path = "/healthz", status = 200 }}, {{ path = "/", status = 200, body_contains = "turnout-demo-app" }}]

[shadow]
# Live GET requests are mirrored to the candidate for 5s and the answers compared; the
# version number in every answer is expected to differ. Each request also goes a second
# time to live, to learn what differs anyway (noise) and to time live's answers to the
# same copies: 5s give about 500 pairs, so the p99s compared are not one slow answer.
duration = "5s"
ignore_json = ["/version"]
noise_sample = 1.0
max_mismatch_rate = 0.01
# Copies and live answers share this machine's cores: p99s of a few milliseconds move
# with scheduling, so the latency rule is loose here.
max_latency_ratio_p99 = 3.0
min_requests = 20

[bake]
duration = "15s"
interval = "1s"
window = "5s"
max_error_rate = 0.02
max_p99 = "500ms"
min_requests = 10

[decommission]
delay = "3s"
"#,
        command = toml_string(&command),
    )
}

/// `value` as one word for `sh`, quoted only when it needs to be (paths print plainly).
pub fn quote_arg(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:+=,@".contains(&b));
    if plain {
        value.to_owned()
    } else {
        shell_quote(value).into_owned()
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// 128 random bits as hex, from the kernel (or, failing that, std's randomly keyed hash).
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !from_kernel {
        use std::hash::{BuildHasher as _, Hasher as _};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Two free loopback ports (free now; the router binds them a moment later).
pub(crate) fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_is_valid_and_quotes_paths() {
        let dir = Path::new("/tmp/a dir/with 'quotes\"");
        let app = Path::new("/opt/my app/turnout-demo-app");
        let text = config_text(app, dir, 18080, 19901);
        let cfg = turnout_config::Config::from_toml(&text, "demo")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let command = cfg.provision.and_then(|p| p.command).unwrap_or_default();
        assert!(
            command.contains(r#"exec '/opt/my app/turnout-demo-app' --port {port}"#),
            "{command}"
        );
        assert!(
            command.contains(r#"--db '/tmp/a dir/with '\''quotes"/shop.db' $x"#),
            "{command}"
        );
        assert_eq!(cfg.listen.addr.port(), 18080);
        assert_eq!(cfg.admin.addr.port(), 19901);
    }

    #[test]
    fn the_provision_command_fails_only_bad_versions() {
        // Run the shell part with `echo` in place of the app.
        let cases = [("v1", ""), ("v3-bad", "--fail-rate 0.3"), ("bad", "")];
        for (version, knob) in cases {
            let command =
                format!("case {version} in *-bad) x='--fail-rate 0.3';; *) x='';; esac; echo $x");
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), knob, "{version}");
        }
    }
}
