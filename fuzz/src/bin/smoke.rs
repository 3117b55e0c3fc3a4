//! Stable-Rust smoke driver for the fuzz targets: no libFuzzer and no coverage feedback,
//! only the seed corpus and random mutations of it (xorshift; bit flips, byte changes,
//! inserts, deletes, splices, interesting tokens). A panic is a finding: the input is
//! written to `fuzz/artifacts/TARGET/smoke-crash-HASH` and the driver exits 1.
//!
//! Usage: smoke TARGET CORPUS_DIR ITERATIONS|SECONDSs [SEED]  (`100000`, or `30s`)

use std::panic;
use std::path::{Path, PathBuf};
use std::time::Instant;

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"transfer-encoding: chunked\r\n",
    b"content-length: ",
    b"host: a\r\n",
    b"connection: close, upgrade\r\n",
    b"\n\xF0\x9F\x90\xB5\xF0\x9F\x99\x88\xF0\x9F\x99\x89\n",
    b"1 ab 1 0\n",
    b"2 ab 1 5\n",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b":",
    b",",
    b"[[",
    b"\"\"\"",
    b"'''",
    b"=",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"ffffffffffffffff",
    b"\\u0000",
    b"\xff",
    b"\x00",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                input.drain(i..i + n);
            }
            4 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a + 1);
                    let i = rng.below(len + 1);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            6 if len > 1 => {
                // Duplicate a range (repeated headers, records, nesting).
                let a = rng.below(len);
                let b = a + 1 + rng.below((len - a).min(64));
                let piece = input[a..b].to_vec();
                input.splice(b..b, piece);
            }
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

fn load(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: smoke TARGET CORPUS_DIR ITERATIONS|SECONDSs [SEED]");
        std::process::exit(2);
    }
    let target = args[1].as_str();
    if !turnout_fuzz::TARGETS.contains(&target) {
        eprintln!(
            "unknown target {target}; known: {:?}",
            turnout_fuzz::TARGETS
        );
        std::process::exit(2);
    }
    let corpus = load(Path::new(&args[2]));
    // A number of mutated inputs, or a time budget written `30s`.
    let (iterations, budget) = match args[3].strip_suffix('s') {
        Some(secs) => (
            u64::MAX,
            Some(secs.parse::<f64>().expect("SECONDS must be a number")),
        ),
        None => (
            args[3].parse::<u64>().expect("ITERATIONS must be a number"),
            None,
        ),
    };
    let seed: u64 = args
        .get(4)
        .map_or(0x9e37_79b9_7f4a_7c15, |s| s.parse().expect("SEED"));
    let mut rng = Rng(seed | 1);
    panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut runs = 0u64;
    let check = |input: &[u8], runs: &mut u64| {
        *runs += 1;
        if panic::catch_unwind(|| turnout_fuzz::run(target, input)).is_err() {
            let _ = panic::take_hook();
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(target);
            std::fs::create_dir_all(&dir).expect("artifacts dir");
            let path = dir.join(format!("smoke-crash-{:016x}", hash(input)));
            std::fs::write(&path, input).expect("write crash input");
            eprintln!(
                "{target}: PANIC after {runs} inputs; input saved to {}",
                path.display()
            );
            // Run it once more with the default hook, to print the message.
            let _ = panic::catch_unwind(|| turnout_fuzz::run(target, input));
            std::process::exit(1);
        }
    };
    for seed_input in &corpus {
        check(seed_input, &mut runs);
    }
    let mut input = Vec::new();
    for i in 0..iterations {
        if i % 1024 == 0 && budget.is_some_and(|b| started.elapsed().as_secs_f64() >= b) {
            break;
        }
        input.clear();
        if !corpus.is_empty() {
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        }
        mutate(&mut rng, &mut input, &corpus);
        check(&input, &mut runs);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{target}: {runs} inputs ({} seeds) in {secs:.1}s, {:.0}/s, no panic",
        corpus.len(),
        runs as f64 / secs.max(1e-9)
    );
}
