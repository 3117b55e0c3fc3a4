//! What changed between two config files, key by key: what `turnout reload` prints, and
//! how it finds keys that a running router cannot change.

use std::collections::BTreeMap;

/// One key whose value differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dotted key, `bake.max_error_rate` (`analysis[1].max` in an array of tables).
    pub key: String,
    /// Its value before, as TOML; `None` when it was not set.
    pub old: Option<String>,
    /// Its value now; `None` when it is no longer set.
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => write!(f, "{}: {} -> {}", self.key, short(o), short(n)),
            (None, Some(n)) => write!(f, "{}: (not set) -> {}", self.key, short(n)),
            (Some(o), None) => write!(f, "{}: {} -> (not set)", self.key, short(o)),
            (None, None) => write!(f, "{}", self.key),
        }
    }
}

/// A value quoted at most this long in a message.
const SHOWN: usize = 80;

fn short(v: &str) -> String {
    if v.len() <= SHOWN {
        return v.to_owned();
    }
    let mut end = SHOWN;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &v[..end], v.len())
}

/// The keys whose values differ between two TOML documents (both already validated), in
/// key order. Formatting, comments and key order do not count.
pub fn diff(old: &str, new: &str) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    if let Ok(t) = toml::from_str::<toml::Table>(old) {
        flatten("", &toml::Value::Table(t), &mut a);
    }
    if let Ok(t) = toml::from_str::<toml::Table>(new) {
        flatten("", &toml::Value::Table(t), &mut b);
    }
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            old: a.get(k).cloned(),
            new: b.get(k).cloned(),
        })
        .collect()
}

/// Tables become dotted keys; an array of tables (`[[analysis]]`) `key[i].field`; every
/// other value is kept whole, as TOML text.
fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&join(k), v, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), render(other));
        }
    }
}

/// A value as TOML would write it.
fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", inner.join(", "))
        }
        toml::Value::Table(t) => {
            let inner: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", render(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}

/// The keys a running router cannot change, even by handing over to a new process: where
/// its state lives. (Everything else, listen addresses included, a reload applies.)
pub fn needs_restart(changes: &[Change]) -> Vec<String> {
    const FIXED: [&str; 4] = [
        "state.backend",
        "state.dir",
        "state.endpoints",
        "state.prefix",
    ];
    changes
        .iter()
        .filter(|c| FIXED.contains(&c.key.as_str()))
        .map(|c| c.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_by_key() {
        let old = r#"
            [listen]
            addr = "127.0.0.1:8080"
            [bake]
            max_error_rate = 0.01
            [notify]
            webhooks = ["http://127.0.0.1:1/a"]
            [[analysis]]
            name = "mem"
            max = 1
        "#;
        let new = r#"
            # comments and order do not count
            [bake]
            max_error_rate = 0.05
            [listen]
            addr = "127.0.0.1:8080"
            [log]
            access = "stdout"
            [[analysis]]
            name = "mem"
            max = 2
        "#;
        let got: Vec<String> = diff(old, new).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "analysis[0].max: 1 -> 2",
                "bake.max_error_rate: 0.01 -> 0.05",
                "log.access: (not set) -> \"stdout\"",
                "notify.webhooks: [\"http://127.0.0.1:1/a\"] -> (not set)",
            ]
        );
        assert!(diff(old, old).is_empty());
    }

    #[test]
    fn state_location_needs_a_restart() {
        let changes = diff(
            "[state]\ndir = \"a\"\n[bake]\nduration = \"1m\"\n",
            "[state]\ndir = \"b\"\n[bake]\nduration = \"2m\"\n",
        );
        assert_eq!(needs_restart(&changes), ["state.dir"]);
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(500);
        let changes = diff("", &format!("[hooks]\npre_deploy = \"{long}\"\n"));
        let line = changes[0].to_string();
        assert!(line.len() < 150, "{line}");
        assert!(line.contains("(502 bytes)"), "{line}");
    }
}
