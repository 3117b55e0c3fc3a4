//! A stand-in service for trying turnout by hand: answers every request with its name.
//!
//! `cargo run -p turnout-testkit --example backend -- NAME PORT`

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(port)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: backend NAME PORT   (e.g. backend blue 7001)");
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("PORT must be a number, got {port:?}"))?;
    let backend = turnout_testkit::Backend::start_on(&name, port).await?;
    println!("backend {name} listening on http://{}", backend.addr);
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
