//! Printing for people: one line at a time to stdout, flushed, so that scripts reading a
//! pipe see each line when it is printed. A leaf: it uses no other module of this crate.

use std::io::Write;

/// Prints one line to stdout and flushes it.
pub(crate) fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}
