//! A walk over the spanned TOML document that records every problem instead of stopping
//! at the first.
//!
//! [`Table`] is one TOML table with the keys it may hold; its getters check the type and
//! form of one value each, record a [`ConfigError`] (dotted key, line of the value) when
//! it is wrong, and return `None` so the caller falls back to the default and carries on.

use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::values::closest;
use crate::ConfigError;

type Value<'a> = Spanned<DeValue<'a>>;

/// Collects the problems found while walking the document.
pub(crate) struct Ctx<'s> {
    text: &'s str,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'s> Ctx<'s> {
    pub(crate) fn new(text: &'s str) -> Ctx<'s> {
        Ctx {
            text,
            errors: Vec::new(),
        }
    }

    /// Records a problem at `key`, located at `span` when the key is in the file.
    pub(crate) fn report(&mut self, key: String, span: Option<&Range<usize>>, message: String) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.errors.push(ConfigError { key, line, message });
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|b| **b == b'\n').count() + 1
}

/// Whether a zero duration is a valid setting.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    Allowed,
    Rejected,
}

/// The numbers a float key accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Number {
    /// A share, 0 to 1 inclusive.
    Fraction,
    /// A finite ratio greater than 0.
    Positive,
}

/// One TOML table of the config and the keys it may hold.
pub(crate) struct Table<'a> {
    /// Dotted path, empty for the top level.
    path: String,
    /// Where the table is written; `None` when it is absent.
    span: Option<Range<usize>>,
    entries: Option<&'a DeTable<'a>>,
    keys: &'static [&'static str],
}

impl<'a> Table<'a> {
    /// The document's top level; reports keys not in `keys`.
    pub(crate) fn root(
        ctx: &mut Ctx,
        doc: &'a Spanned<DeTable<'a>>,
        keys: &'static [&'static str],
    ) -> Table<'a> {
        Table::new(
            ctx,
            String::new(),
            Some(doc.span()),
            Some(doc.get_ref()),
            keys,
        )
    }

    fn new(
        ctx: &mut Ctx,
        path: String,
        span: Option<Range<usize>>,
        entries: Option<&'a DeTable<'a>>,
        keys: &'static [&'static str],
    ) -> Table<'a> {
        let table = Table {
            path,
            span,
            entries,
            keys,
        };
        for (key, _) in entries.into_iter().flatten() {
            let name = key.get_ref().as_ref();
            if !keys.contains(&name) {
                let hint = match closest(name, keys) {
                    Some(near) => format!("; did you mean \"{near}\"?"),
                    None => ".".to_string(),
                };
                let message = format!(
                    "unknown key \"{name}\"{hint} Valid keys here: {}",
                    keys.join(", ")
                );
                ctx.report(table.key(name), Some(&key.span()), message);
            }
        }
        table
    }

    /// Whether the table is written in the file.
    pub(crate) fn is_present(&self) -> bool {
        self.entries.is_some()
    }

    /// The table when it is written in the file, for optional sections.
    pub(crate) fn present(self) -> Option<Table<'a>> {
        self.is_present().then_some(self)
    }

    /// The dotted path of `key` in this table.
    pub(crate) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value<'a>> {
        debug_assert!(
            self.keys.contains(&key),
            "{key} is not declared in {}",
            self.path
        );
        self.entries?.get(key)
    }

    /// Whether `key` is written in this table.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Records a problem with `key`, at its line, or at the table's line when it is absent.
    pub(crate) fn error(&self, ctx: &mut Ctx, key: &str, message: String) {
        let span = self.get(key).map(|v| v.span()).or(self.span.clone());
        ctx.report(self.key(key), span.as_ref(), message);
    }

    /// Records a problem with the table as a whole.
    pub(crate) fn error_here(&self, ctx: &mut Ctx, message: String) {
        ctx.report(self.path.clone(), self.span.as_ref(), message);
    }

    /// The sub-table `key` (inline or `[a.b]` form); absent when not written or not a table.
    pub(crate) fn table(
        &self,
        ctx: &mut Ctx,
        key: &str,
        keys: &'static [&'static str],
    ) -> Table<'a> {
        let path = self.key(key);
        match self.get(key) {
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Table::new(ctx, path, Some(v.span()), Some(t), keys),
                _ => {
                    type_error(ctx, path.clone(), v, &format!("a table, e.g. [{path}]"));
                    Table::new(ctx, path, None, None, keys)
                }
            },
            None => Table::new(ctx, path, None, None, keys),
        }
    }

    /// The array of tables `key` (`[{..}, {..}]` or `[[a.b]]` form).
    pub(crate) fn tables(
        &self,
        ctx: &mut Ctx,
        key: &str,
        keys: &'static [&'static str],
    ) -> Vec<Table<'a>> {
        let mut tables = Vec::new();
        for (path, v) in self
            .array(ctx, key, "an array of tables")
            .into_iter()
            .flatten()
        {
            match v.get_ref() {
                DeValue::Table(t) => {
                    tables.push(Table::new(ctx, path, Some(v.span()), Some(t), keys))
                }
                _ => type_error(ctx, path, v, "a table, e.g. { path = \"/\" }"),
            }
        }
        tables
    }

    /// The elements of array `key`, each with its dotted path `key[i]`.
    fn array(
        &self,
        ctx: &mut Ctx,
        key: &str,
        expected: &str,
    ) -> Option<Vec<(String, &'a Value<'a>)>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (format!("{}[{i}]", self.key(key)), item))
                    .collect(),
            ),
            _ => {
                type_error(ctx, self.key(key), v, expected);
                None
            }
        }
    }

    /// The string `key`, converted by `parse`; a parse error is reported with the key's line.
    pub(crate) fn parse<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = self.get(key)?;
        parse_value(ctx, self.key(key), v, parse)
    }

    /// The string `key` as it is.
    pub(crate) fn string(&self, ctx: &mut Ctx, key: &str) -> Option<String> {
        self.parse(ctx, key, |s| Ok(s.to_string()))
    }

    /// The string `key`, which must not be blank (commands, versions, names).
    pub(crate) fn non_empty(&self, ctx: &mut Ctx, key: &str) -> Option<String> {
        self.parse(ctx, key, non_blank)
    }

    /// The array of strings `key`, each converted by `parse`; `None` when absent.
    pub(crate) fn list<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let items = self.array(ctx, key, "an array of strings, e.g. [\"a\", \"b\"]")?;
        let parsed = items
            .into_iter()
            .filter_map(|(path, v)| parse_value(ctx, path, v, &mut parse))
            .collect();
        Some(parsed)
    }

    /// The duration `key`, e.g. `"30s"`.
    pub(crate) fn duration(&self, ctx: &mut Ctx, key: &str, zero: Zero) -> Option<Duration> {
        let v = self.get(key)?;
        if !matches!(v.get_ref(), DeValue::String(_)) {
            type_error(ctx, self.key(key), v, "a duration string, e.g. \"30s\"");
            return None;
        }
        self.parse(ctx, key, |s| {
            match turnout_core::units::parse_duration(s)? {
                d if d.is_zero() && zero == Zero::Rejected => Err(format!(
                    "{s:?} is zero: give a duration greater than zero, e.g. \"1s\""
                )),
                d => Ok(d),
            }
        })
    }

    /// The size `key`: a number of bytes, or a string such as `"10MB"` or `"512KiB"`.
    pub(crate) fn size(&self, ctx: &mut Ctx, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(_) => self.parse(ctx, key, turnout_core::units::parse_size),
            DeValue::Integer(_) => self
                .int(ctx, key, 1, i64::MAX)
                .map(|n| u64::try_from(n).unwrap_or(u64::MAX)),
            _ => {
                type_error(ctx, self.key(key), v, "a size, e.g. \"10MB\"");
                None
            }
        }
    }

    /// The integer `key`, which must lie in `min..=max`.
    pub(crate) fn int(&self, ctx: &mut Ctx, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.get(key)?;
        let n = int_value(ctx, self.key(key), v)?;
        if (min..=max).contains(&n) {
            return Some(n);
        }
        let message = match max {
            i64::MAX => format!("{n} is too small: use a number of at least {min}"),
            _ => format!("{n} is out of range: use a number from {min} to {max}"),
        };
        ctx.report(self.key(key), Some(&v.span()), message);
        None
    }

    /// The array of integers `key`, each in `min..=max`; `None` when absent.
    pub(crate) fn int_list(
        &self,
        ctx: &mut Ctx,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<Vec<i64>> {
        let items = self.array(ctx, key, "an array of numbers, e.g. [5, 25, 50, 100]")?;
        let mut numbers = Vec::new();
        for (path, v) in items {
            match int_value(ctx, path.clone(), v) {
                None => {}
                Some(n) if (min..=max).contains(&n) => numbers.push(n),
                Some(n) => ctx.report(
                    path,
                    Some(&v.span()),
                    format!("{n} is out of range: use a number from {min} to {max}"),
                ),
            }
        }
        Some(numbers)
    }

    /// The number `key` (integer or float), which must lie in `range`.
    pub(crate) fn float(&self, ctx: &mut Ctx, key: &str, range: Number) -> Option<f64> {
        let v = self.get(key)?;
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            _ => {
                type_error(ctx, self.key(key), v, "a number, e.g. 0.5");
                return None;
            }
        };
        let (valid, expected) = match range {
            Number::Fraction => ((0.0..=1.0).contains(&n?), "a number from 0 to 1, e.g. 0.01"),
            Number::Positive => (
                n? > 0.0 && n?.is_finite(),
                "a number greater than 0, e.g. 1.5",
            ),
        };
        if !valid {
            let message = format!("out of range: use {expected}");
            ctx.report(self.key(key), Some(&v.span()), message);
            return None;
        }
        n
    }

    /// The boolean `key`.
    pub(crate) fn bool(&self, ctx: &mut Ctx, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                type_error(ctx, self.key(key), v, "true or false");
                None
            }
        }
    }
}

/// A string that is not blank: a command, a version, a name.
pub(crate) fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("is empty: give a value".to_string())
    } else {
        Ok(s.to_string())
    }
}

fn parse_value<T>(
    ctx: &mut Ctx,
    path: String,
    v: &Value,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let DeValue::String(s) = v.get_ref() else {
        type_error(ctx, path, v, "a string");
        return None;
    };
    parse(s)
        .map_err(|message| ctx.report(path, Some(&v.span()), message))
        .ok()
}

fn int_value(ctx: &mut Ctx, path: String, v: &Value) -> Option<i64> {
    let DeValue::Integer(i) = v.get_ref() else {
        type_error(ctx, path, v, "a whole number");
        return None;
    };
    let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
    if n.is_none() {
        ctx.report(path, Some(&v.span()), "number too large".to_string());
    }
    n
}

/// Reports a value of the wrong type. Names only the type found, never the value (it may
/// be a secret).
fn type_error(ctx: &mut Ctx, path: String, v: &Value, expected: &str) {
    let found = match v.get_ref() {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    };
    ctx.report(
        path,
        Some(&v.span()),
        format!("expected {expected}, found {found}"),
    );
}
