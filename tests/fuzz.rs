//! A mutation fuzzer on stable Rust for the parsers that read what others send: the token
//! endpoint's success body, its error bodies, the sanitiser every server text goes through,
//! `Retry-After`, the configuration file, and Power BI's answers (probe, `GenerateToken`, stored
//! embed tokens).
//!
//! No new crates and no coverage instrumentation: each target has a seed corpus of real inputs
//! (what the simulated Entra ID sends, error bodies from its catalogue, proxy pages, HTTP dates,
//! the example `config.toml`), and every execution either generates an input from a small
//! grammar (JSON with the fields Entra sends, TOML with the keys the config knows) or takes a
//! corpus entry and applies a random stack of byte-level mutations (bit flips, inserts, deletes,
//! duplicated and spliced chunks, "interesting" values: huge and negative numbers, `1e308`,
//! terminal escapes, bidi controls, deep nesting, invalid UTF-8, very long runs). An input whose
//! outcome falls in a class not seen before joins the corpus: a crude signal, but it keeps the
//! inputs that reached a new branch of the target's answer without instrumenting the code.
//!
//! Every execution runs inside `catch_unwind` and checks the target's properties (see each
//! `check_*` function). A finding is shrunk, printed escaped (and saved under
//! `CARGO_TARGET_TMPDIR/fuzz-findings/`), and fails the test at the end of its time budget.
//!
//! * `FUZZ_SECONDS`: time budget per target (default 2, a short pass for `cargo test`).
//! * `FUZZ_SEED`: the seed (default random, always printed): the same seed replays the same
//!   sequence of inputs, so a finding can be reproduced given a budget long enough to reach it.
//!
//! ```text
//! FUZZ_SECONDS=150 cargo test --release --test fuzz -- --nocapture --test-threads=1
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt::{Debug, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fastrand::Rng;
use secrecy::ExposeSecret;

use powerbi_tokend::clock::{MAX_RFC3339_UNIX, unix_seconds, unix_to_system};
use powerbi_tokend::config;
use powerbi_tokend::error::{self, MAX_TEXT_CHARS, MIN_SECRET_CHARS, REDACTED};
use powerbi_tokend::schedule::parse_retry_after;
use powerbi_tokend::token::{
    MAX_EXPIRY_HORIZON, MAX_RETRY_AFTER, MAX_SCHEDULED_LIFETIME, MIN_TOKEN_LIFETIME, RetryAfter,
    parse_token_response,
};
use powerbi_tokend_sim::{CATALOGUE_CODES, catalogue};

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/// 2026-01-01T00:00:00Z: the arrival time most executions use, so that seed bodies with fixed
/// `expires_on` values land on both sides of every bound.
const NOW: i64 = 1_767_225_600;

/// A property that did not hold (or a panic), for one input.
struct Violation {
    /// Which property: findings with the same one are the same finding. For a panic, its
    /// location, so two different panics are two findings.
    property: String,
    /// What exactly was wrong, for the report.
    detail: String,
}

impl Violation {
    fn new(property: &str, detail: String) -> Self {
        Violation {
            property: property.to_owned(),
            detail,
        }
    }
}

/// One target: its corpus, its grammar and its properties.
struct Target<C> {
    name: &'static str,
    /// Real inputs to start from.
    seeds: Vec<Vec<u8>>,
    /// Fragments the mutator inserts, on top of the shared ones.
    dictionary: Vec<Vec<u8>>,
    /// Longer inputs are cut: nothing the daemon reads is unbounded (bodies are capped at
    /// 64 KiB, headers by hyper, the config at 64 MiB, which would only slow the search).
    max_len: usize,
    /// Picks what is not in the input (arrival time, status, secrets, the clock).
    context: fn(&mut Rng) -> C,
    /// A fresh input from the grammar, for that context.
    generate: fn(&mut Rng, &C) -> Vec<u8>,
    /// Runs the target on the input and checks its properties: the outcome's class, or what
    /// went wrong.
    check: fn(&[u8], &C) -> Result<String, Violation>,
}

/// A finding, shrunk.
struct Finding<C> {
    violation: Violation,
    input: Vec<u8>,
    context: C,
    /// How many inputs hit the same property.
    hits: u64,
}

/// What one target's run did.
struct Report {
    executions: u64,
    elapsed: Duration,
    classes: usize,
    corpus: usize,
    findings: Vec<String>,
}

thread_local! {
    /// Set while a target runs: its panics are findings, recorded here rather than printed.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the last caught panic happened, and its message.
    static CAUGHT: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that stays quiet for panics inside a target, which are reported
/// as findings, and leaves every other panic (the test's own assertions) to the default hook.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                CAUGHT.with(|c| *c.borrow_mut() = Some((location, payload)));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `check` so that a panic becomes a [`Violation`] naming where it happened.
fn execute<C>(target: &Target<C>, input: &[u8], context: &C) -> Result<String, Violation> {
    CATCHING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(input, context)));
    CATCHING.with(|c| c.set(false));
    result.unwrap_or_else(|_| {
        let (location, message) = CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default();
        Err(Violation {
            property: format!("no panic (panicked at {location})"),
            detail: message,
        })
    })
}

fn budget() -> Duration {
    let seconds = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// The run's seed: `FUZZ_SEED` (decimal or 0x-hex) or a random one, the same for every target of
/// one process so one number replays the whole run.
fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let given = std::env::var("FUZZ_SEED").ok().and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        });
        given.unwrap_or_else(|| fastrand::u64(..))
    })
}

/// Fuzzes one target for the time budget and fails with every finding, shrunk and escaped.
fn fuzz<C: Clone + Debug>(target: Target<C>) {
    install_panic_hook();
    let seed = base_seed();
    // Each target its own stream, so running them in parallel or alone replays the same inputs.
    let mut rng = Rng::with_seed(seed ^ fnv1a(target.name.as_bytes()));
    println!(
        "fuzz {}: seed {seed} (replay: FUZZ_SEED={seed} FUZZ_SECONDS={})",
        target.name,
        budget().as_secs_f64()
    );
    let report = run(&target, &mut rng);
    let rate = report.executions as f64 / report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "fuzz {}: {} executions in {:.1} s ({rate:.0}/s), {} outcome classes, corpus {}, {} findings",
        target.name,
        report.executions,
        report.elapsed.as_secs_f64(),
        report.classes,
        report.corpus,
        report.findings.len()
    );
    assert!(
        report.findings.is_empty(),
        "fuzz {}: {} findings (seed {seed}):\n\n{}",
        target.name,
        report.findings.len(),
        report.findings.join("\n\n")
    );
}

fn run<C: Clone + Debug>(target: &Target<C>, rng: &mut Rng) -> Report {
    const MAX_CORPUS: usize = 1024;
    const MAX_KEPT_LEN: usize = 32 * 1024;
    let dictionary: Vec<Vec<u8>> = shared_dictionary()
        .into_iter()
        .chain(target.dictionary.iter().cloned())
        .collect();
    let mut corpus = target.seeds.clone();
    let mut classes = HashSet::new();
    let mut findings: Vec<Finding<C>> = Vec::new();
    let mut executions = 0u64;
    let start = Instant::now();
    let deadline = start + budget();
    // Every seed runs once, whatever the budget, so a short pass still checks the real inputs.
    let mut pending_seeds = target.seeds.len();
    loop {
        let context = (target.context)(rng);
        let input = if pending_seeds > 0 {
            pending_seeds -= 1;
            target.seeds[pending_seeds].clone()
        } else {
            if Instant::now() >= deadline {
                break;
            }
            let mut input = match rng.u8(..100) {
                0..25 => (target.generate)(rng, &context),
                25..35 => {
                    let mut fresh = (target.generate)(rng, &context);
                    mutate(rng, &mut fresh, &corpus, &dictionary);
                    fresh
                }
                _ => {
                    let mut from_corpus = corpus[rng.usize(..corpus.len())].clone();
                    mutate(rng, &mut from_corpus, &corpus, &dictionary);
                    from_corpus
                }
            };
            input.truncate(target.max_len);
            input
        };
        executions += 1;
        match execute(target, &input, &context) {
            Ok(class) => {
                // Large inputs run slowly and would crowd the corpus: they are tried, not kept.
                if classes.insert(class) && input.len() <= MAX_KEPT_LEN {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    } else {
                        let slot = rng.usize(target.seeds.len()..MAX_CORPUS);
                        corpus[slot] = input;
                    }
                }
            }
            Err(violation) => {
                match findings
                    .iter_mut()
                    .find(|f| f.violation.property == violation.property)
                {
                    Some(known) => known.hits += 1,
                    None => {
                        let (input, violation) = shrink(target, input, &context, violation);
                        findings.push(Finding {
                            violation,
                            input,
                            context,
                            hits: 1,
                        });
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed();
    Report {
        executions,
        elapsed,
        classes: classes.len(),
        corpus: corpus.len(),
        findings: findings
            .iter()
            .enumerate()
            .map(|(index, finding)| describe(target.name, index, finding))
            .collect(),
    }
}

/// Removes lines, then chunks of a failing input while the same property still fails: halves,
/// quarters, … single bytes, for a quarter of the budget (at most two seconds), so the report
/// shows what matters.
fn shrink<C>(
    target: &Target<C>,
    mut input: Vec<u8>,
    context: &C,
    mut violation: Violation,
) -> (Vec<u8>, Violation) {
    let deadline =
        Instant::now() + (budget() / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    // Whole lines first (a config keeps parsing when a line goes, rarely when half of one does),
    // then ever smaller chunks of bytes.
    let mut line = 0;
    while Instant::now() < deadline {
        let lines: Vec<&[u8]> = input.split_inclusive(|b| *b == b'\n').collect();
        if line >= lines.len() || lines.len() == 1 {
            break;
        }
        let candidate: Vec<u8> = lines
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != line)
            .flat_map(|(_, bytes)| bytes.iter().copied())
            .collect();
        match execute(target, &candidate, context) {
            Err(again) if again.property == violation.property => {
                input = candidate;
                violation = again;
            }
            _ => line += 1,
        }
    }
    let mut chunk = (input.len() / 2).max(1);
    'shrinking: loop {
        let mut at = 0;
        let mut progressed = false;
        while at < input.len() {
            if Instant::now() >= deadline {
                break 'shrinking;
            }
            let end = (at + chunk).min(input.len());
            let mut candidate = input[..at].to_vec();
            candidate.extend_from_slice(&input[end..]);
            match execute(target, &candidate, context) {
                Err(again) if again.property == violation.property => {
                    input = candidate;
                    violation = again;
                    progressed = true;
                }
                _ => at += chunk,
            }
        }
        if chunk == 1 && !progressed {
            break;
        }
        if !progressed {
            chunk /= 2;
        }
    }
    (input, violation)
}

fn describe<C: Debug>(target: &str, index: usize, finding: &Finding<C>) -> String {
    let saved = save_finding(target, index, &finding.input);
    let mut shown = escape(&finding.input);
    if shown.len() > 4000 {
        shown.truncate(4000);
        shown.push_str("…(cut)");
    }
    format!(
        "[{target} #{index}] property: {}\n  detail: {}\n  context: {:?}\n  hits: {}\n  input ({} bytes, saved to {saved}): b\"{shown}\"",
        finding.violation.property,
        finding.violation.detail,
        finding.context,
        finding.hits,
        finding.input.len(),
    )
}

/// Writes the input where an integrator can replay it; the path, or why not.
fn save_finding(target: &str, index: usize, input: &[u8]) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
    let name: String = target
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}-{index}.bin"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => path.display().to_string(),
        Err(err) => format!("nowhere ({err})"),
    }
}

/// Bytes as a Rust byte-string literal body: printable ASCII as is, everything else escaped.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Text with its control and hidden characters escaped, for messages about them.
fn escape_text(text: &str) -> String {
    text.escape_debug().to_string()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An outcome class from a message: digits folded, cut short, so that "(1234 bytes)" and
/// "(99 bytes)" are one class.
fn class_of(message: &str) -> String {
    let mut class = String::new();
    let mut in_digits = false;
    for c in message.chars().take(60) {
        if c.is_ascii_digit() {
            if !in_digits {
                class.push('#');
            }
            in_digits = true;
        } else {
            class.push(c);
            in_digits = false;
        }
    }
    class
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// Values that break parsers, for every target.
fn shared_dictionary() -> Vec<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = [
        "0",
        "-0",
        "1",
        "-1",
        "2147483647",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "\"18446744073709551615\"",
        "99999999999999999999999999999999",
        "1e308",
        "-1e308",
        "1e309",
        "1.7976931348623157e308",
        "4.9e-324",
        "1e-400",
        "0.5",
        "3599",
        "NaN",
        "\"NaN\"",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "\"Infinity\"",
        "null",
        "true",
        "false",
        "\"\"",
        "[]",
        "{}",
        "\u{1b}[2J",
        "\u{1b}]0;pwned\u{7}",
        "\\u001b[2J",
        "\\u0000",
        "\\ud800",
        "\\udc00",
        "\\\"",
        "\\\\",
        "\u{202e}",
        "\u{202a}",
        "\u{2066}",
        "\u{2069}",
        "\u{200b}",
        "\u{feff}",
        "\u{e0041}",
        "\u{85}",
        "\u{9b}",
        "\r\n",
        "\r",
        "\n",
        "\t",
        "\0",
        "é",
        "漢",
        "😀",
        "e\u{301}",
        "[[[[[[[[[[[[[[[[",
        "{{{{{{{{",
        "{\"a\":{\"a\":{\"a\":",
        "]]]]]]]]",
        "eyJ",
        "AADSTS",
        "AADSTS99999999999",
        "AADSTS7000215:",
        "%",
        "%7E",
        "%7e",
        "+",
        "~",
        "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Invalid UTF-8: a lone continuation byte, an overlong NUL, a surrogate, beyond U+10FFFF,
    // a truncated sequence.
    for bytes in [
        &b"\xff"[..],
        b"\x80",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe6\xbc",
    ] {
        words.push(bytes.to_vec());
    }
    words
}

/// Applies a random stack of one to eight byte-level mutations.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[Vec<u8>]) {
    // Mostly shallow stacks, now and then a deep one.
    let deepest = rng.usize(1..=8);
    let depth = 1 + rng.usize(..deepest);
    for _ in 0..depth {
        mutate_once(rng, input, corpus, dictionary);
    }
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[Vec<u8>]) {
    let len = input.len();
    // A position to insert at (may be the end) and a range inside the input.
    let position = |rng: &mut Rng| rng.usize(..=len);
    let range = |rng: &mut Rng| {
        if len == 0 {
            return 0..0;
        }
        let start = rng.usize(..len);
        let longest = (len - start).min(if rng.bool() { 8 } else { len });
        start..start + rng.usize(1..=longest.max(1)).min(len - start)
    };
    match rng.u8(..13) {
        // Flip one bit.
        0 if len > 0 => {
            let at = rng.usize(..len);
            input[at] ^= 1 << rng.u8(..8);
        }
        // Overwrite a byte with a structural or random one.
        1 if len > 0 => {
            const BYTES: &[u8] = b"\"\\{}[],:=.\n\r\t #'0-+eE\x00\x1b\x7f\x80\xc3\xff";
            let at = rng.usize(..len);
            input[at] = if rng.bool() {
                BYTES[rng.usize(..BYTES.len())]
            } else {
                rng.u8(..)
            };
        }
        // Insert a few random bytes.
        2 => {
            let at = position(rng);
            let count = rng.usize(1..=4);
            for _ in 0..count {
                input.insert(at, rng.u8(..));
            }
        }
        // Delete a range.
        3 if len > 0 => {
            let cut = range(rng);
            input.drain(cut);
        }
        // Duplicate a range somewhere.
        4 if len > 0 => {
            let chunk = input[range(rng)].to_vec();
            let at = position(rng);
            input.splice(at..at, chunk);
        }
        // Splice in a chunk of another input.
        5 if !corpus.is_empty() => {
            let other = &corpus[rng.usize(..corpus.len())];
            if !other.is_empty() {
                let start = rng.usize(..other.len());
                let end = start + rng.usize(1..=(other.len() - start).min(256));
                let at = position(rng);
                input.splice(at..at, other[start..end].iter().copied());
            }
        }
        // Insert a dictionary word.
        6 | 7 => {
            let word = &dictionary[rng.usize(..dictionary.len())];
            let at = position(rng);
            input.splice(at..at, word.iter().copied());
        }
        // Replace a range with a dictionary word.
        8 if len > 0 => {
            let word = dictionary[rng.usize(..dictionary.len())].clone();
            input.splice(range(rng), word);
        }
        // Replace a run of digits (a number in the input) with an interesting number.
        9 => {
            const NUMBERS: &[&str] = &[
                "0",
                "-1",
                "1",
                "9223372036854775807",
                "-9223372036854775808",
                "18446744073709551615",
                "1e308",
                "-1e308",
                "31622400",
                "31622401",
                "253402300799",
                "99999999999999999999",
            ];
            let from = rng.usize(..len.max(1));
            if let Some(start) = (0..len)
                .map(|i| (i + from) % len)
                .find(|&i| input[i].is_ascii_digit())
            {
                let end = start
                    + input[start..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                let number = NUMBERS[rng.usize(..NUMBERS.len())];
                input.splice(start..end, number.bytes());
            }
        }
        // Truncate.
        10 if len > 0 => input.truncate(rng.usize(..len)),
        // Repeat a short chunk many times: long strings, deep nesting. Long repeats are rare:
        // every execution of a 100 KiB input costs what a hundred short ones do.
        11 if len > 0 => {
            let start = rng.usize(..len);
            let chunk = input[start..(start + rng.usize(1..=8)).min(len)].to_vec();
            let times = match rng.u8(..100) {
                0..3 => rng.usize(2000..20_000),
                3..20 => rng.usize(100..2000),
                _ => rng.usize(2..100),
            };
            let at = position(rng);
            let repeated: Vec<u8> = chunk
                .iter()
                .copied()
                .cycle()
                .take(chunk.len() * times)
                .collect();
            input.splice(at..at, repeated);
        }
        // Cross over: this input's head, another's tail.
        12 if !corpus.is_empty() => {
            let other = &corpus[rng.usize(..corpus.len())];
            let head = rng.usize(..=len);
            let tail = rng.usize(..=other.len());
            input.truncate(head);
            input.extend_from_slice(&other[tail..]);
        }
        // The chosen mutation needs a non-empty input: insert a word instead.
        _ => {
            let word = &dictionary[rng.usize(..dictionary.len())];
            input.extend_from_slice(word);
        }
    }
}

/// One of `items`.
fn pick<'a, T: ?Sized>(rng: &mut Rng, items: &[&'a T]) -> &'a T {
    items[rng.usize(..items.len())]
}

/// Text over tricky fragments: controls, bidi, multi-byte characters, token characters.
fn tricky_text(rng: &mut Rng, max_fragments: usize) -> String {
    const FRAGMENTS: &[&str] = &[
        "a",
        "Z",
        "0",
        "9",
        " ",
        "  ",
        ".",
        "~",
        "/",
        "+",
        "=",
        "-",
        "_",
        "%",
        "\"",
        "\\",
        "'",
        "\u{1b}",
        "\u{1b}[2J",
        "\r",
        "\n",
        "\r\n",
        "\t",
        "\u{7}",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\u{9b}",
        "\u{a0}",
        "\u{ad}",
        "\u{202e}",
        "\u{202a}",
        "\u{2067}",
        "\u{2069}",
        "\u{200b}",
        "\u{200f}",
        "\u{2028}",
        "\u{feff}",
        "\u{e0041}",
        "\u{fffd}",
        "é",
        "漢",
        "😀",
        "e\u{301}",
        "eyJ",
        "AADSTS",
        "[REDACTED]",
        "…",
        "Trace ID: ",
        "https://",
        "login.microsoftonline.com",
    ];
    let count = rng.usize(..=max_fragments);
    let mut text = String::new();
    for _ in 0..count {
        if rng.u8(..8) == 0 {
            // A run of token characters, long enough to look like a token now and then.
            let run = rng.usize(1..80);
            text.extend((0..run).map(|_| token_char(rng)));
        } else {
            text.push_str(pick(rng, FRAGMENTS));
        }
    }
    text
}

fn token_char(rng: &mut Rng) -> char {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~+/=";
    char::from(CHARS[rng.usize(..CHARS.len())])
}

fn random_guid(rng: &mut Rng) -> String {
    let hex = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.usize(..16)]))
            .collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
}

/// A JWT shaped like an Entra access token (header, claims, random signature).
fn jwt(rng: &mut Rng, expires_on: i64) -> String {
    let header = r#"{"typ":"JWT","alg":"RS256","x5t":"c2ltdWxhdGVkLWVudHJhLWtleQ"}"#;
    let claims = format!(
        r#"{{"aud":"https://analysis.windows.net/powerbi/api","iss":"https://sts.windows.net/{}/","exp":{expires_on},"oid":"{}","uti":"{}"}}"#,
        random_guid(rng),
        random_guid(rng),
        rng.u64(..)
    );
    let signature: Vec<u8> = (0..rng.usize(16..256)).map(|_| rng.u8(..)).collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A JSON string literal of `text`.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A JSON object from raw `key: value` pairs, with the spacing varied.
fn json_object(rng: &mut Rng, fields: &[(String, String)]) -> Vec<u8> {
    let space = |rng: &mut Rng| match rng.u8(..10) {
        0 => "\n  ",
        1 => " ",
        2 => "\t",
        _ => "",
    };
    let mut out = String::from("{");
    for (index, (key, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(space(rng));
        let _ = write!(out, "{key}{}:{}{value}", space(rng), space(rng));
    }
    out.push_str(space(rng));
    out.push('}');
    out.into_bytes()
}

/// A random JSON value, possibly nested, for fields whose type the target does not expect.
fn random_json(rng: &mut Rng, depth: u32) -> String {
    match rng.u8(..10) {
        0 => "null".to_owned(),
        1 => if rng.bool() { "true" } else { "false" }.to_owned(),
        2 => rng.i64(..).to_string(),
        3 => format!("{:e}", rng.f64() * 10f64.powi(rng.i32(-320..310))),
        4 if depth < 4 => {
            let items: Vec<String> = (0..rng.usize(..4))
                .map(|_| random_json(rng, depth + 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        5 if depth < 4 => {
            let fields: Vec<String> = (0..rng.usize(..4))
                .map(|_| {
                    format!(
                        "{}:{}",
                        json_string(&tricky_text(rng, 3)),
                        random_json(rng, depth + 1)
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        6 => format!(
            "{}{}",
            "[".repeat(rng.usize(100..3000)),
            "]".repeat(rng.usize(..3000))
        ),
        _ => json_string(&tricky_text(rng, 12)),
    }
}

// ---------------------------------------------------------------------------------------------
// Target: parse_token_response
// ---------------------------------------------------------------------------------------------

/// When the body arrived. `extreme` marks a clock outside the years the daemon can print
/// (before 1970, after 9999): only "no panic" and the message properties are asked of those;
/// `AccessToken::new` documents its lifetime bounds for real clock readings.
#[derive(Clone, Debug)]
struct Arrival {
    received_at: SystemTime,
    extreme: bool,
}

fn arrival(rng: &mut Rng) -> Arrival {
    let sub_second = Duration::from_nanos(rng.u64(..1_000_000_000));
    let at = |seconds: i64| unix_to_system(seconds);
    let (received_at, extreme) = match rng.u8(..100) {
        0..60 => (at(NOW), false),
        60..80 => (at(NOW) + sub_second, false),
        80..88 => (SystemTime::now(), false),
        88..98 => {
            let seconds = *pick(
                rng,
                &[
                    &0,
                    &1,
                    &(i64::from(i32::MAX)),
                    &(i64::from(u32::MAX)),
                    &(MAX_RFC3339_UNIX - 2 * 366 * 86_400),
                ],
            );
            (at(seconds) + sub_second, false)
        }
        _ => {
            let far = UNIX_EPOCH.checked_add(Duration::from_secs(
                rng.u64((MAX_RFC3339_UNIX as u64 - 366 * 86_400)..(i64::MAX as u64 / 2)),
            ));
            let before = UNIX_EPOCH.checked_sub(Duration::from_secs(rng.u64(1..1_000_000_000)));
            let chosen = if rng.bool() { far } else { before };
            (chosen.unwrap_or(UNIX_EPOCH) + sub_second, true)
        }
    };
    Arrival {
        received_at,
        extreme,
    }
}

fn token_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::with_seed(1);
    let v2 = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{}"}}"#,
        jwt(&mut rng, NOW + 3599)
    );
    let v2_refresh_in = format!(
        r#"{{"token_type":"Bearer","expires_in":7200,"ext_expires_in":7200,"refresh_in":3600,"access_token":"{}"}}"#,
        jwt(&mut rng, NOW + 7200)
    );
    let v1 = format!(
        r#"{{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"{}","not_before":"{}","resource":"https://analysis.windows.net/powerbi/api","access_token":"{}"}}"#,
        NOW + 3599,
        NOW - 300,
        jwt(&mut rng, NOW + 3599)
    );
    let v1_refresh_in = format!(
        r#"{{"token_type":"Bearer","expires_in":"7200","ext_expires_in":"7200","refresh_in":"3600","expires_on":"{}","not_before":"{}","resource":"https://analysis.usgovcloudapi.net/powerbi/api","access_token":"{}"}}"#,
        NOW + 7200,
        NOW - 300,
        jwt(&mut rng, NOW + 7200)
    );
    // Managed identity: App Service (expires_on only) and IMDS (every number a string).
    let app_service = format!(
        r#"{{"access_token":"{}","expires_on":"{}","resource":"https://analysis.windows.net/powerbi/api","token_type":"Bearer","client_id":"{}"}}"#,
        jwt(&mut rng, NOW + 86_399),
        NOW + 86_399,
        random_guid(&mut rng)
    );
    let imds = format!(
        r#"{{"access_token":"{}","client_id":"{}","expires_in":"86399","expires_on":"{}","ext_expires_in":"86399","not_before":"{}","resource":"https://analysis.windows.net/powerbi/api","token_type":"Bearer"}}"#,
        jwt(&mut rng, NOW + 86_399),
        random_guid(&mut rng),
        NOW + 86_399,
        NOW - 300
    );
    let generic = r#"{"access_token":"opaque-partner-token-0123456789abcdefghijklmnop","token_type":"bearer","expires_in":3600,"scope":"reports.read"}"#;
    let mut seeds: Vec<Vec<u8>> = [
        v2,
        v2_refresh_in,
        v1,
        v1_refresh_in,
        app_service,
        imds,
        generic.to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    for bad in [
        &b""[..],
        b"null",
        b"{}",
        b"[]",
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        br#"{"token_type":"Bearer","expires_in":35"#,
        br#"{"access_token":"t","expires_in":"soon"}"#,
        br#"{"access_token":"t","expires_in":1e300}"#,
        br#"{"access_token":"t","expires_on":"-9223372036854775808"}"#,
        br#"{"access_token":"t","expires_in":31622400,"refresh_in":"99999999999999999999"}"#,
    ] {
        seeds.push(bad.to_vec());
    }
    seeds
}

/// Values for `expires_in`, `expires_on`, `refresh_in`: numbers (v2) or strings (v1), around
/// every bound of `AccessToken::new`, and junk.
fn token_number(rng: &mut Rng, base: i64, relative: bool) -> String {
    let horizon = MAX_EXPIRY_HORIZON.as_secs() as i64;
    let offsets = [
        0,
        1,
        2,
        -1,
        59,
        3599,
        86_399,
        horizon - 1,
        horizon,
        horizon + 1,
    ];
    let number = match rng.u8(..10) {
        0..5 => {
            let offset = offsets[rng.usize(..offsets.len())];
            if relative {
                base.saturating_add(offset).to_string()
            } else {
                offset.to_string()
            }
        }
        5 => rng.i64(..).to_string(),
        6 => rng.i64(-10..100_000).to_string(),
        7 => pick(
            rng,
            &[
                "9223372036854775807",
                "-9223372036854775808",
                "18446744073709551615",
                "99999999999999999999999",
                "1e308",
                "-1e308",
                "1e309",
                "3599.9",
                "-0",
                "0.0",
                "4.9e-324",
                "1E3",
            ],
        )
        .to_owned(),
        8 => return random_json(rng, 2),
        _ => format!("{}", rng.f64() * 1e6),
    };
    // v1 sends numbers as strings, sometimes padded or signed.
    match rng.u8(..6) {
        0..3 => number,
        3 => format!("\"{number}\""),
        4 => format!("\" {number} \""),
        _ => format!("\"+{number}\""),
    }
}

fn generate_token_body(rng: &mut Rng, arrival: &Arrival) -> Vec<u8> {
    let base = unix_seconds(arrival.received_at);
    let mut fields = Vec::new();
    let add = |rng: &mut Rng, odds: u8| rng.u8(..10) < odds;
    if add(rng, 9) {
        let token = match rng.u8(..10) {
            0..5 => json_string(&jwt(rng, base + 3599)),
            5 => json_string(
                &(0..rng.usize(1..3000))
                    .map(|_| token_char(rng))
                    .collect::<String>(),
            ),
            6 => json_string(&tricky_text(rng, 20)),
            7 => "\"\"".to_owned(),
            // JSON escapes that decode to the token: the message must not quote them either.
            8 => {
                let raw: String = (0..rng.usize(9..64)).map(|_| token_char(rng)).collect();
                format!(
                    "\"{}\"",
                    raw.chars()
                        .map(|c| format!("\\u{:04x}", u32::from(c)))
                        .collect::<String>()
                )
            }
            _ => random_json(rng, 2),
        };
        fields.push(("\"access_token\"".to_owned(), token));
    }
    if add(rng, 8) {
        let token_type = pick(
            rng,
            &[
                "\"Bearer\"",
                "\"bearer\"",
                "\"pop\"",
                "null",
                "5",
                "\"\\u001b[2J\"",
            ],
        );
        fields.push(("\"token_type\"".to_owned(), token_type.to_owned()));
    }
    if add(rng, 7) {
        fields.push(("\"expires_in\"".to_owned(), token_number(rng, base, false)));
    }
    if add(rng, 5) {
        fields.push(("\"expires_on\"".to_owned(), token_number(rng, base, true)));
    }
    if add(rng, 3) {
        fields.push(("\"refresh_in\"".to_owned(), token_number(rng, base, false)));
    }
    if add(rng, 3) {
        fields.push((
            "\"ext_expires_in\"".to_owned(),
            token_number(rng, base, false),
        ));
    }
    if add(rng, 2) {
        fields.push(("\"not_before\"".to_owned(), token_number(rng, base, true)));
    }
    if add(rng, 2) {
        let key = json_string(&tricky_text(rng, 4));
        fields.push((key, random_json(rng, 0)));
    }
    if add(rng, 1) && !fields.is_empty() {
        // Duplicate a field: serde refuses, the message must still quote nothing.
        let twin = fields[rng.usize(..fields.len())].clone();
        fields.push(twin);
    }
    rng.shuffle(&mut fields);
    json_object(rng, &fields)
}

/// Every `access_token` value in a body: the decoded one when the body is JSON, and the raw
/// bytes after every `"access_token":` when it is not (a truncated body still holds a token).
fn access_tokens(body: &[u8]) -> Vec<Vec<u8>> {
    let mut tokens = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        && let Some(serde_json::Value::String(token)) = map.get("access_token")
    {
        tokens.push(token.clone().into_bytes());
    }
    let key = b"\"access_token\"";
    let mut from = 0;
    while let Some(at) = find(&body[from..], key) {
        let mut i = from + at + key.len();
        let skip_space = |i: &mut usize| {
            while body.get(*i).is_some_and(u8::is_ascii_whitespace) {
                *i += 1;
            }
        };
        skip_space(&mut i);
        if body.get(i) == Some(&b':') {
            i += 1;
            skip_space(&mut i);
            if body.get(i) == Some(&b'"') {
                let start = i + 1;
                let mut end = start;
                while end < body.len() && body[end] != b'"' {
                    end += if body[end] == b'\\' { 2 } else { 1 };
                }
                tokens.push(body[start..end.min(body.len())].to_vec());
            }
        }
        from += at + 1;
    }
    tokens
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How long a run of the token may appear in a message before it counts as quoting it.
const QUOTE_RUN: usize = 9;

/// The runs every message of `parse_token_response` has whatever the token: its own words, with
/// numbers folded (see [`fold_numbers`]). Learnt from the target itself (bodies whose token is one
/// character), so the check follows the library's wording without copying it.
fn token_message_runs() -> &'static HashSet<Vec<u8>> {
    static RUNS: OnceLock<HashSet<Vec<u8>>> = OnceLock::new();
    RUNS.get_or_init(|| {
        let bodies = [
            "not json".to_owned(),
            "[]".to_owned(),
            r#"{"expires_in":1}"#.to_owned(),
            r#"{"access_token":"t"}"#.to_owned(),
            r#"{"access_token":"t","expires_in":0}"#.to_owned(),
            r#"{"access_token":"t","expires_in":-5}"#.to_owned(),
            format!(r#"{{"access_token":"t","expires_on":{}}}"#, NOW + 1),
            format!(r#"{{"access_token":"t","expires_on":{}}}"#, NOW - 1),
            r#"{"access_token":"t","expires_in":99999999999}"#.to_owned(),
        ];
        let mut runs = HashSet::new();
        for body in &bodies {
            for received_at in [
                unix_to_system(NOW),
                unix_to_system(NOW) + Duration::from_millis(500),
            ] {
                if let Err(err) = parse_token_response(body.as_bytes(), received_at) {
                    let folded = fold_numbers(err.message.as_bytes());
                    runs.extend(folded.windows(QUOTE_RUN).map(<[u8]>::to_vec));
                }
            }
        }
        runs
    })
}

/// Every run of digits as one `#`: the numbers in a message (the body's length, seconds) are
/// computed, not quoted, and a token's digits count as one character each run.
fn fold_numbers(bytes: &[u8]) -> Vec<u8> {
    let mut folded = Vec::with_capacity(bytes.len());
    for (index, byte) in bytes.iter().enumerate() {
        if !byte.is_ascii_digit() {
            folded.push(*byte);
        } else if index == 0 || !bytes[index - 1].is_ascii_digit() {
            folded.push(b'#');
        }
    }
    folded
}

/// A run of at least [`QUOTE_RUN`] characters of `token` (numbers folded) that `message`
/// contains, other than the message's own words.
fn quoted_run(message: &str, token: &[u8]) -> Option<String> {
    let token = fold_numbers(token);
    if token.len() < QUOTE_RUN {
        return None;
    }
    let known = token_message_runs();
    let message = fold_numbers(message.as_bytes());
    let runs: HashSet<&[u8]> = message
        .windows(QUOTE_RUN)
        .filter(|run| !known.contains(*run))
        .collect();
    token
        .windows(QUOTE_RUN)
        .find(|run| runs.contains(run))
        .map(|run| String::from_utf8_lossy(run).into_owned())
}

/// `parse_token_response`: on success the expiry is within the documented bounds; on failure
/// the message quotes nothing of the token and holds no control character.
fn check_token(body: &[u8], arrival: &Arrival) -> Result<String, Violation> {
    // As the refresh sees it: a classified error.
    let result = parse_token_response(body, arrival.received_at)
        .map_err(powerbi_tokend::error::RefreshError::from);
    match result {
        Ok(token) => {
            if arrival.extreme {
                return Ok("ok (extreme clock)".to_owned());
            }
            let issued_on = token.issued_on();
            let expires_on = token.expires_on();
            let whole_seconds = expires_on - issued_on;
            let min = MIN_TOKEN_LIFETIME.as_secs() as i64;
            let horizon = MAX_EXPIRY_HORIZON.as_secs() as i64;
            let lifetime = token.lifetime().get();
            let facts = || {
                format!(
                    "issued_on {issued_on}, expires_on {expires_on}, lifetime {lifetime:?}, refresh_in {:?}",
                    token.refresh_in()
                )
            };
            if issued_on != unix_seconds(arrival.received_at) {
                return Err(Violation::new(
                    "issued_on is the second of arrival",
                    facts(),
                ));
            }
            if whole_seconds < min {
                return Err(Violation::new(
                    "expires at least MIN_TOKEN_LIFETIME after the second of arrival",
                    facts(),
                ));
            }
            if whole_seconds > horizon {
                return Err(Violation::new("expires within MAX_EXPIRY_HORIZON", facts()));
            }
            if lifetime.is_zero() || lifetime > MAX_SCHEDULED_LIFETIME {
                return Err(Violation::new(
                    "0 < scheduled lifetime <= MAX_SCHEDULED_LIFETIME",
                    facts(),
                ));
            }
            // `expires_on` is whole seconds, rounded down, while `expires_in` counts from the
            // arrival itself (to the nanosecond): the schedule may end within that second.
            if arrival.received_at + lifetime > unix_to_system(expires_on) + Duration::from_secs(1)
            {
                return Err(Violation::new(
                    "the scheduled lifetime ends within the second of the expiry",
                    facts(),
                ));
            }
            if token
                .refresh_in()
                .is_some_and(|refresh_in| refresh_in.is_zero() || refresh_in > lifetime)
            {
                return Err(Violation::new("0 < refresh_in <= lifetime", facts()));
            }
            if token.secret.expose_secret().is_empty() {
                return Err(Violation::new("the token is not empty", facts()));
            }
            let lifetime_class = match whole_seconds {
                ..60 => "seconds",
                60..86_400 => "hours",
                _ => "days",
            };
            Ok(format!(
                "ok {lifetime_class} refresh_in={}",
                token.refresh_in().is_some()
            ))
        }
        Err(err) => {
            if let Some(c) = err.message.chars().find(|c| c.is_control()) {
                return Err(Violation::new(
                    "an error message holds no control character",
                    format!("{:?} in {}", c, escape_text(&err.message)),
                ));
            }
            for token in access_tokens(body) {
                if let Some(run) = quoted_run(&err.message, &token) {
                    return Err(Violation::new(
                        "an error message quotes nothing of the access_token",
                        format!("{run:?} in {}", escape_text(&err.message)),
                    ));
                }
            }
            Ok(format!("err {}: {}", err.reason, class_of(&err.message)))
        }
    }
}

#[test]
fn fuzz_parse_token_response() {
    fuzz(Target {
        name: "parse_token_response",
        seeds: token_seeds(),
        dictionary: [
            "\"access_token\":",
            "\"expires_in\":",
            "\"expires_on\":",
            "\"refresh_in\":",
            "\"token_type\":\"Bearer\",",
            "\"ext_expires_in\":\"3599\",",
            "\"31622400\"",
            "\"31622401\"",
            "\" 3599 \"",
            "\"+3599\"",
            "\"-3599\"",
            "3599.0",
            "1767225601",
            "\"1767225600\"",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        max_len: 128 * 1024,
        context: arrival,
        generate: generate_token_body,
        check: check_token,
    });
}

// ---------------------------------------------------------------------------------------------
// Secrets, for classify and sanitise
// ---------------------------------------------------------------------------------------------

/// Secrets as a request carries them: an Entra client secret, a generic OAuth2 one with every
/// character that encodes differently, a client assertion, one of the minimum length, and a
/// non-ASCII one.
const SECRETS: &[&str] = &[
    "Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789",
    "Ab1~x y/z+é\"q&w",
    "s3cr3t~VALUE~that-must-never-be-logged",
    "p@ss%w0rd!#;,?=",
    "hunter22",
    "k3y!",
    "Ünïcødé-sëcret-ключ",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhcHAiLCJzdWIiOiJhcHAifQ.c2lnbmF0dXJl",
];

/// The forms [`error::sanitise`] documents it redacts: the value, form-urlencoded, percent-encoded
/// with either hex case, and JSON-escaped.
fn secret_forms(secret: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let json = json_string(secret);
    let mut forms = vec![
        secret.to_owned(),
        lower_hex(&form),
        lower_hex(&percent),
        form,
        percent,
        json[1..json.len() - 1].to_owned(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

fn lower_hex(text: &str) -> String {
    let mut out = String::new();
    let mut hex_left = 0;
    for c in text.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                hex_left = 2;
            }
        }
    }
    out
}

/// The secret as a server might send it back in its text: as sent (form-encoded), decoded,
/// percent-encoded, JSON-escaped, and with its whitespace changed (a server that reformats it
/// still shows it).
fn reflected_secret(rng: &mut Rng, secret: &str) -> String {
    let forms = secret_forms(secret);
    match rng.u8(..8) {
        0..5 => forms[rng.usize(..forms.len())].clone(),
        5 => secret.replace(
            ' ',
            pick(rng, &["\t", "\r\n", "  ", "\u{1b}", "\u{202e}", "\u{a0}"]),
        ),
        6 => {
            // Split by a control character: the halves must not join into the secret.
            let cut = secret
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.usize(..secret.chars().count().max(1)))
                .unwrap_or(0);
            format!(
                "{}{}{}",
                &secret[..cut],
                pick(rng, &["\r\n", "\u{1b}", "\u{200b}", "\u{7}"]),
                &secret[cut..]
            )
        }
        _ => secret.to_owned(),
    }
}

/// The secrets one request carries, chosen from [`SECRETS`].
fn pick_secrets(rng: &mut Rng) -> Vec<&'static str> {
    let first = pick(rng, SECRETS);
    if rng.u8(..4) == 0 {
        vec![first, pick(rng, SECRETS)]
    } else {
        vec![first]
    }
}

/// No control character (C0, C1), bidi control, zero-width or other invisible character that
/// `sanitise` documents it removes.
fn hidden_char(text: &str) -> Option<char> {
    text.chars().find(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{FEFF}'
            )
    })
}

/// The properties every sanitised text has: capped, nothing hidden, no secret in any form.
fn check_clean(what: &str, text: &str, secrets: &[&str]) -> Result<(), Violation> {
    if let Some(c) = hidden_char(text) {
        return Err(Violation::new(
            &format!("{what} holds no control or hidden character"),
            format!("U+{:04X} in {}", u32::from(c), escape_text(text)),
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(Violation::new(
            &format!("{what} is at most MAX_TEXT_CHARS"),
            format!("{chars} characters: {}", escape_text(text)),
        ));
    }
    for secret in secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
    {
        for form in secret_forms(secret) {
            if text.contains(&form) {
                // A secret with whitespace is its own finding, so that it does not hide a leak
                // of the others behind the same property.
                let kind = if secret.contains(char::is_whitespace) {
                    " (a secret with whitespace)"
                } else {
                    ""
                };
                return Err(Violation::new(
                    &format!("{what} never holds a secret{kind}"),
                    format!("{form:?} (a form of {secret:?}) in {}", escape_text(text)),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target: classify
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    retry_after: Option<RetryAfter>,
    secrets: Vec<&'static str>,
}

fn answer(rng: &mut Rng) -> Answer {
    let status = match rng.u8(..10) {
        0..7 => *pick(
            rng,
            &[&400, &401, &403, &404, &408, &429, &500, &502, &503, &504],
        ),
        7 => *pick(
            rng,
            &[&0, &1, &200, &299, &399, &499, &599, &600, &999, &u16::MAX],
        ),
        _ => rng.u16(..),
    };
    let retry_after = rng
        .bool()
        .then(|| RetryAfter::capped(Duration::from_secs(rng.u64(..=u64::MAX))));
    Answer {
        status,
        retry_after,
        secrets: pick_secrets(rng),
    }
}

fn entra_error_body(
    rng: &mut Rng,
    code: u32,
    error: &str,
    text: &str,
    trace: &str,
    correlation: &str,
) -> String {
    format!(
        r#"{{"error":{},"error_description":{},"error_codes":[{code}],"timestamp":"2026-01-01 00:00:00Z","trace_id":"{trace}","correlation_id":"{correlation}","error_uri":"https://login.microsoftonline.com/error?code={code}"}}"#,
        json_string(error),
        json_string(&format!(
            "AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: 2026-01-01 00:00:{:02}Z",
            rng.u8(..60)
        )),
    )
}

fn classify_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::with_seed(2);
    let mut seeds: Vec<Vec<u8>> = CATALOGUE_CODES
        .iter()
        .map(|&code| {
            let (_, error, text) = catalogue(code);
            let (trace, correlation) = (random_guid(&mut rng), random_guid(&mut rng));
            entra_error_body(&mut rng, code, error, text, &trace, &correlation).into_bytes()
        })
        .collect();
    // The secret reflected, as a server that quotes the request does.
    seeds.push(
        entra_error_body(
            &mut rng,
            7000215,
            "invalid_client",
            "Invalid client secret 'Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789' (sent as client_secret=Ab1%7Ex+y%2Fz%2B%C3%A9%22q%26w)",
            "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f",
            "0a1b2c3d-3b4f-4a6d-8e9f-5d1e7c2a4e5f",
        )
        .into_bytes(),
    );
    for other in [
        // Managed identity (IMDS, App Service) and generic OAuth2 servers.
        r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        r#"{"statusCode":400,"message":"No MSI found for specified ClientId/ResourceId.","correlationId":"7f3c0b8e-1f2a-4c5d-9e6f-0a1b2c3d4e5f"}"#,
        r#"{"error":"invalid_client","error_description":"Client authentication failed","error_uri":"https://auth.partner.example/docs"}"#,
        r#"{"error":"temporarily_unavailable"}"#,
        r#"{"error_codes":[50196]}"#,
        r#"{"error":"invalid_grant","error_description":"AADSTS70000: The provided value for the 'code' parameter is not valid."}"#,
        // What proxies, gateways and load balancers answer.
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        "<!DOCTYPE html><html><body><h1>Access denied</h1><p>Your request was blocked by the corporate proxy. Reference #18.2f3c1d17.1767225600.4a5b6c7d</p></body></html>",
        "Too Many Requests",
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        "",
        "\u{1b}[2J\u{1b}]0;pwned\u{7}server exploded",
    ] {
        seeds.push(other.as_bytes().to_vec());
    }
    seeds
}

const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_resource",
    "invalid_tenant",
    "temporarily_unavailable",
    "server_error",
    "interaction_required",
    "",
];

fn generate_error_body(rng: &mut Rng, answer: &Answer) -> Vec<u8> {
    let secret = answer.secrets[rng.usize(..answer.secrets.len())];
    let text = |rng: &mut Rng| -> String {
        let mut text = tricky_text(rng, 16);
        if rng.u8(..3) > 0 {
            let at = text
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.usize(..=text.chars().count()))
                .unwrap_or(text.len());
            text.insert_str(at, &reflected_secret(rng, secret));
        }
        if rng.u8(..10) == 0 {
            text = text.repeat(rng.usize(2..200));
        }
        text
    };
    let mut fields = Vec::new();
    if rng.u8(..10) < 8 {
        let error = if rng.u8(..4) == 0 {
            text(rng)
        } else {
            pick(rng, OAUTH_ERRORS).to_owned()
        };
        fields.push(("\"error\"".to_owned(), json_string(&error)));
    }
    if rng.u8(..10) < 7 {
        let code = *pick(rng, &CATALOGUE_CODES.iter().collect::<Vec<_>>());
        let (_, _, catalogue_text) = catalogue(code);
        let description = match rng.u8(..4) {
            0 => text(rng),
            1 => format!("AADSTS{code}: {}", text(rng)),
            _ => format!(
                "AADSTS{code}: {catalogue_text} {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: 2026-01-01 00:00:00Z",
                text(rng),
                random_guid(rng),
                random_guid(rng)
            ),
        };
        fields.push((
            "\"error_description\"".to_owned(),
            json_string(&description),
        ));
    }
    if rng.u8(..10) < 6 {
        let codes: Vec<String> = (0..rng.usize(..4))
            .map(|_| match rng.u8(..6) {
                0..3 => CATALOGUE_CODES[rng.usize(..CATALOGUE_CODES.len())].to_string(),
                3 => rng.u32(..).to_string(),
                4 => pick(
                    rng,
                    &[
                        "-1",
                        "4294967296",
                        "1e3",
                        "\"50196\"",
                        "null",
                        "[50196]",
                        "50196.0",
                    ],
                )
                .to_owned(),
                _ => random_json(rng, 2),
            })
            .collect();
        fields.push((
            "\"error_codes\"".to_owned(),
            format!("[{}]", codes.join(",")),
        ));
    }
    for key in ["\"trace_id\"", "\"correlation_id\""] {
        if rng.u8(..10) < 6 {
            let value = match rng.u8(..4) {
                0 | 1 => json_string(&random_guid(rng)),
                2 => json_string(&text(rng)),
                _ => random_json(rng, 1),
            };
            fields.push((key.to_owned(), value));
        }
    }
    if rng.u8(..10) < 2 {
        fields.push(("\"timestamp\"".to_owned(), random_json(rng, 1)));
    }
    rng.shuffle(&mut fields);
    match rng.u8(..10) {
        // Not JSON at all: a page quoting the secret.
        0 => format!(
            "<html><body><h1>{}</h1><p>{}</p></body></html>",
            text(rng),
            text(rng)
        )
        .into_bytes(),
        1 => text(rng).into_bytes(),
        _ => json_object(rng, &fields),
    }
}

/// `classify`: the message and every kept string field is capped, holds no control or hidden
/// character and no secret of the request; the status and Retry-After pass through.
fn check_classify(body: &[u8], answer: &Answer) -> Result<String, Violation> {
    let err = error::classify(answer.status, body, answer.retry_after, &answer.secrets);
    check_clean("the message", &err.message, &answer.secrets)?;
    for (name, field) in [
        ("oauth_error", &err.oauth_error),
        ("trace_id", &err.trace_id),
        ("correlation_id", &err.correlation_id),
    ] {
        if let Some(field) = field {
            check_clean(name, field, &answer.secrets)?;
        }
    }
    if err.status != Some(answer.status) || err.retry_after != answer.retry_after {
        return Err(Violation::new(
            "the status and Retry-After are kept",
            format!("status {:?}, retry_after {:?}", err.status, err.retry_after),
        ));
    }
    Ok(format!(
        "{}/{}/error={}/trace={}/codes={}",
        err.class,
        err.reason,
        err.oauth_error.is_some(),
        err.trace_id.is_some(),
        err.aadsts.len().min(2),
    ))
}

#[test]
fn fuzz_classify() {
    fuzz(Target {
        name: "classify",
        seeds: classify_seeds(),
        dictionary: [
            "\"error\":\"invalid_client\",",
            "\"error_description\":\"AADSTS50196: ",
            "\"error_codes\":[90055],",
            "\"error_codes\":[",
            "\"trace_id\":\"",
            "\"correlation_id\":\"",
            "\\r\\nTrace ID: ",
            "Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789",
            "Ab1~x y/z+é\\\"q&w",
            "Ab1%7Ex+y%2Fz%2B%C3%A9%22q%26w",
            "Ab1~x%20y%2fz%2b%c3%a9%22q%26w",
            "s3cr3t~VALUE~that-must-never-be-logged",
            "p%40ss%25w0rd%21%23%3B%2C%3F%3D",
            "hunter22",
            "k3y!",
            "<html>",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        max_len: 128 * 1024,
        context: answer,
        generate: generate_error_body,
        check: check_classify,
    });
}

// ---------------------------------------------------------------------------------------------
// Target: sanitise
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Secrets(Vec<&'static str>);

fn sanitise_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::with_seed(3);
    let mut seeds: Vec<Vec<u8>> = [
        "AADSTS7000215: Invalid client secret provided. Trace ID: 5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f, café 漢字 😀",
        "error sending request for url (https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token)",
        "\u{1b}[2J\u{1b}]0;pwned\u{7}AADSTS1: no",
        "client_secret=hunter22&client_assertion=opaque-assert",
        "bad secret Ab1~x y/z+é\"q&w twice Ab1%7Ex+y%2Fz%2B%C3%A9%22q%26w.",
        "Bearer Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789, and more",
        "HTTP 502 from proxy.corp.example.com v2.0",
        "//host/Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    seeds.push(format!("{{\"access_token\":\"{}\"}}", jwt(&mut rng, NOW)).into_bytes());
    seeds.push("word ".repeat(100).into_bytes());
    seeds.push("a漢😀 ".repeat(80).into_bytes());
    seeds
}

fn generate_text(rng: &mut Rng, secrets: &Secrets) -> Vec<u8> {
    let mut text = tricky_text(rng, 60);
    for _ in 0..rng.usize(..3) {
        let secret = secrets.0[rng.usize(..secrets.0.len())];
        let at = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(rng.usize(..=text.chars().count()))
            .unwrap_or(text.len());
        text.insert_str(at, &reflected_secret(rng, secret));
    }
    if rng.u8(..8) == 0 {
        text.push_str(&jwt(rng, NOW));
    }
    if rng.u8(..10) == 0 {
        // Around the cap, so the cut lands everywhere.
        let filler = pick(rng, &["x", "é", "漢", "😀", "ab ", "/path", "Ab1"]);
        text = format!("{}{text}", filler.repeat(rng.usize(250..320)));
    }
    text.into_bytes()
}

/// `sanitise`: capped, nothing hidden, no secret in any documented form, and idempotent.
fn check_sanitise(bytes: &[u8], secrets: &Secrets) -> Result<String, Violation> {
    let text = String::from_utf8_lossy(bytes);
    let once = error::sanitise(&text, &secrets.0);
    check_clean("sanitised text", &once, &secrets.0)?;
    let twice = error::sanitise(&once, &secrets.0);
    if twice != once {
        return Err(Violation::new(
            "sanitise is idempotent",
            format!("once {} twice {}", escape_text(&once), escape_text(&twice)),
        ));
    }
    Ok(format!(
        "empty={} cut={} redacted={} changed={}",
        once.is_empty(),
        once.ends_with('…'),
        once.contains(REDACTED),
        once != text
    ))
}

#[test]
fn fuzz_sanitise() {
    fuzz(Target {
        name: "sanitise",
        seeds: sanitise_seeds(),
        dictionary: SECRETS.iter().map(|s| s.as_bytes().to_vec()).collect(),
        max_len: 64 * 1024,
        context: |rng| Secrets(pick_secrets(rng)),
        generate: generate_text,
        check: check_sanitise,
    });
}

// ---------------------------------------------------------------------------------------------
// Target: parse_retry_after
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Clock(SystemTime);

fn clock(rng: &mut Rng) -> Clock {
    Clock(match rng.u8(..10) {
        0..6 => unix_to_system(NOW),
        6 => SystemTime::now(),
        7 => UNIX_EPOCH,
        8 => unix_to_system(MAX_RFC3339_UNIX),
        _ => UNIX_EPOCH
            .checked_sub(Duration::from_secs(rng.u64(1..1 << 40)))
            .unwrap_or(UNIX_EPOCH),
    })
}

fn retry_after_seeds() -> Vec<Vec<u8>> {
    let now = unix_to_system(NOW);
    let mut seeds: Vec<String> = [
        "0",
        "1",
        "60",
        "120",
        "3599",
        "3600",
        "3601",
        " 30 ",
        "18446744073709551615",
        "99999999999999999999999999",
        "Thursday, 01-Jan-26 00:02:00 GMT",
        "Thu Jan  1 00:02:00 2026",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "-5",
        "1.5",
        "soon",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for offset in [1, 59, 3599, 3600, 3601, 86_400, 365 * 86_400] {
        seeds.push(httpdate::fmt_http_date(now + Duration::from_secs(offset)));
        seeds.push(httpdate::fmt_http_date(now - Duration::from_secs(offset)));
    }
    seeds.into_iter().map(String::into_bytes).collect()
}

fn generate_retry_after(rng: &mut Rng, clock: &Clock) -> Vec<u8> {
    const DAYS: &[&str] = &[
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Thursday", "Xyz", "",
    ];
    const MONTHS: &[&str] = &[
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo",
        "jan", "",
    ];
    let two = |rng: &mut Rng, max: u32| format!("{:02}", rng.u32(..=max));
    let text = match rng.u8(..6) {
        0 => (0..rng.usize(1..40))
            .map(|_| char::from(b'0' + rng.u8(..10)))
            .collect(),
        1 => {
            let bits = rng.u32(1..40);
            let offset = Duration::from_secs(rng.u64(..1 << bits));
            let time = if rng.bool() {
                clock.0.checked_add(offset)
            } else {
                clock.0.checked_sub(offset)
            };
            time.filter(|t| {
                t.duration_since(UNIX_EPOCH)
                    .is_ok_and(|d| d.as_secs() < 253_402_300_800)
            })
            .map(httpdate::fmt_http_date)
            .unwrap_or_default()
        }
        // IMF-fixdate, RFC 850 and asctime, with fields out of range.
        2 => format!(
            "{}, {} {} {} {}:{}:{} GMT",
            pick(rng, DAYS),
            two(rng, 40),
            pick(rng, MONTHS),
            rng.u32(..100_000),
            two(rng, 30),
            two(rng, 70),
            two(rng, 70)
        ),
        3 => format!(
            "{}, {}-{}-{} {}:{}:{} GMT",
            pick(rng, DAYS),
            two(rng, 40),
            pick(rng, MONTHS),
            two(rng, 99),
            two(rng, 30),
            two(rng, 70),
            two(rng, 70)
        ),
        4 => format!(
            "{} {} {:>2} {}:{}:{} {}",
            pick(rng, DAYS),
            pick(rng, MONTHS),
            rng.u32(..40),
            two(rng, 30),
            two(rng, 70),
            two(rng, 70),
            rng.u32(..100_000)
        ),
        _ => tricky_text(rng, 6),
    };
    let pad = |rng: &mut Rng| pick(rng, &["", "", " ", "\t", "\u{a0}", "\u{3000}", "\n"]);
    format!("{}{text}{}", pad(rng), pad(rng)).into_bytes()
}

/// `parse_retry_after`: any answer is at most `MAX_RETRY_AFTER`, and delay-seconds mean that many
/// seconds (capped; digits beyond any integer mean the cap).
fn check_retry_after(bytes: &[u8], clock: &Clock) -> Result<String, Violation> {
    let value = String::from_utf8_lossy(bytes);
    let parsed = parse_retry_after(&value, clock.0).map(RetryAfter::get);
    if let Some(delay) = parsed
        && delay > MAX_RETRY_AFTER
    {
        return Err(Violation::new(
            "Retry-After is at most MAX_RETRY_AFTER",
            format!("{delay:?}"),
        ));
    }
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        let expected = Duration::from_secs(seconds).min(MAX_RETRY_AFTER);
        if parsed != Some(expected) {
            return Err(Violation::new(
                "delay-seconds are that many seconds, capped",
                format!("{parsed:?}, expected {expected:?}"),
            ));
        }
    }
    Ok(match parsed {
        None => "none".to_owned(),
        Some(delay) if delay.is_zero() => "zero".to_owned(),
        Some(delay) if delay == MAX_RETRY_AFTER => "cap".to_owned(),
        Some(_) => "between".to_owned(),
    })
}

#[test]
fn fuzz_parse_retry_after() {
    fuzz(Target {
        name: "parse_retry_after",
        seeds: retry_after_seeds(),
        dictionary: [
            "GMT",
            "UTC",
            "Mon, ",
            "Thursday, ",
            " Jan ",
            "-Jan-",
            " 1994",
            "-94 ",
            "23:59:60",
            "00:00:00",
            "29 Feb 2025",
            "31 Apr",
            "9999",
            "0000",
            "٣٠",
            "３０",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        max_len: 8 * 1024,
        context: clock,
        generate: generate_retry_after,
        check: check_retry_after,
    });
}

// ---------------------------------------------------------------------------------------------
// Target: config::parse
// ---------------------------------------------------------------------------------------------

const CONFIG_PATH: &str = "/etc/powerbi-tokend/config.toml";

/// The small configurations of the unit tests and the README, and the full example.
fn config_seeds() -> Vec<Vec<u8>> {
    let example = include_str!("../config.toml");
    let minimal = r#"
[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "SECRET" }
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
"#;
    let certificate = r#"
[[tenant]]
name = "cert"
tenant_id = "7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60"
client_id = "00000000-0000-0000-0000-000000000002"
client_certificate = { cert = "app.pem", algorithm = "rs256", send_x5c = true }
client_secret_expires = 2027-03-01
sinks = [ { type = "file", path = "/run/t/{name}.token", format = "raw", mode = 0o640 } ]
"#;
    let workload = r#"
[daemon]
max_concurrent_requests = 1
backoff_min = "250ms"
backoff_max = "1h"
imds_endpoint = "http://127.0.0.1:1/metadata/identity/oauth2/token"
log_format = "json"

[[tenant]]
name = "aks"
tenant_id = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000003"
credential = "workload_identity"
federated_token_file = "/var/run/secrets/azure/tokens/azure-identity-token"
schedule = "*/15 * * * *"
sinks = [ { type = "file", path = "/tmp/{name}.json" } ]

[[tenant]]
name = "mi"
credential = "managed_identity"
managed_identity = { resource_id = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id" }
sinks = [ { type = "file", path = "/tmp/{name}.json" } ]
"#;
    let broken = "[server]\nlisten = \"nowhere\"\n[daemon]\nbackoff_min = \"1y\"\nunknown = 1\n[[tenant]]\nname = \"a/b\"\nrefresh_at = 1.5\n";
    let shared_store = r#"
[daemon]
max_requests_per_second = 50

[redis]
url = ["rediss://10.0.0.1:6380", "rediss://10.0.0.2:6380"]
cluster = true
username = "tokend"
password = { file = "redis.pass" }
command_timeout = "1s"
channel = "powerbi-tokend:tokens"
check_interval = "20s"

[fleet]
enabled = true
key_prefix = "powerbi-tokend:fleet"
lease_ttl = "45s"
replica_id = "replica-1"

[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "SECRET" }
sinks = [ { type = "file", path = "/run/t/{name}.json" }, { type = "redis" }, { type = "redis", key = "raw:{name}", format = "raw" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
"#;
    [
        example,
        minimal,
        certificate,
        workload,
        broken,
        shared_store,
        "",
        "[[tenant]]\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

const TENANT_KEYS: &[&str] = &[
    "name",
    "tenant_id",
    "client_id",
    "client_secret",
    "client_secret_expires",
    "client_certificate",
    "credential",
    "federated_token_file",
    "managed_identity",
    "provider",
    "token_url",
    "scope",
    "audience",
    "auth",
    "cloud",
    "authority_host",
    "api",
    "resource",
    "refresh_at",
    "jitter",
    "sinks",
    "schedule",
];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "watch_config",
    "watch_interval",
    "per_tenant_metrics",
];
const DAEMON_KEYS: &[&str] = &[
    "max_concurrent_requests",
    "connect_timeout",
    "request_timeout",
    "backoff_min",
    "backoff_max",
    "permanent_retry_interval",
    "shutdown_grace",
    "ca_file",
    "imds_endpoint",
    "log_format",
];

/// A TOML basic string with hostile content, escaped as TOML requires.
fn toml_string(rng: &mut Rng, text: &str) -> String {
    match rng.u8(..8) {
        // A literal string cannot hold a quote or a control character; fall back to basic.
        0 if !text.contains(['\'', '\n', '\r']) && !text.chars().any(char::is_control) => {
            format!("'{text}'")
        }
        _ => {
            let mut out = String::from("\"");
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => {
                        let _ = write!(out, "\\u{:04X}", u32::from(c));
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
    }
}

/// One of `choices`, as a TOML string.
fn string_of(rng: &mut Rng, choices: &[&str]) -> String {
    let choice = pick(rng, choices);
    toml_string(rng, choice)
}

/// A plausible value for `key`, or now and then any TOML value.
fn toml_value(rng: &mut Rng, key: &str) -> String {
    if rng.u8(..10) < 2 {
        return random_toml(rng, 0);
    }
    match key {
        "listen" => string_of(
            rng,
            &[
                "127.0.0.1:9464",
                "[::1]:0",
                "0.0.0.0:99999",
                "localhost:80",
                "nowhere",
                "",
            ],
        ),
        "watch_config" => pick(rng, &["true", "false", "\"yes\""]).to_owned(),
        "per_tenant_metrics" => string_of(rng, &["all", "unhealthy", "none", "some", ""]),
        "watch_interval"
        | "connect_timeout"
        | "request_timeout"
        | "backoff_min"
        | "backoff_max"
        | "permanent_retry_interval"
        | "shutdown_grace" => string_of(rng, DURATIONS),
        "max_concurrent_requests" => pick(
            rng,
            &[
                "16",
                "0",
                "1",
                "-1",
                "9223372036854775807",
                "4294967296",
                "1.5",
            ],
        )
        .to_owned(),
        "ca_file" | "federated_token_file" => string_of(
            rng,
            &[
                "/etc/ssl/corp.pem",
                "",
                "relative.pem",
                "/nonexistent/\u{1b}[2J",
                "/dev/null",
                "../../etc/shadow",
            ],
        ),
        "imds_endpoint" | "token_url" | "authority_host" => string_of(rng, URLS),
        "log_format" => string_of(rng, &["text", "json", "xml", "TEXT"]),
        "name" => string_of(
            rng,
            &[
                "contoso",
                "fabrikam",
                "a",
                "",
                "a/b",
                "../x",
                "name with space",
                "ténant",
                "x\u{1b}[2J",
                "x\u{202e}y",
            ],
        ),
        "tenant_id" => {
            let guid = random_guid(rng);
            string_of(
                rng,
                &[
                    &guid,
                    "contoso.onmicrosoft.com",
                    "common",
                    "organizations",
                    "",
                    "a/b",
                    "xn--bcher-kva.example",
                ],
            )
        }
        "client_id" => {
            let guid = random_guid(rng);
            string_of(
                rng,
                &[
                    &guid,
                    "partner-client",
                    "",
                    "00000000-0000-0000-0000-00000000000g",
                ],
            )
        }
        "client_secret" => pick(
            rng,
            &[
                "{ env = \"SECRET\" }",
                "{ file = \"/run/secrets/s\" }",
                "{ systemd = \"s\" }",
                "\"literal-secret-in-the-file\"",
                "\"literal\\u001b[2J\"",
                "{ env = \"A\", file = \"b\" }",
                "{}",
                "{ env = \"\" }",
                "{ vault = \"x\" }",
                "5",
            ],
        )
        .to_owned(),
        "client_secret_expires" => pick(
            rng,
            &[
                "\"2027-03-01\"",
                "2027-03-01",
                "1979-05-27T07:32:00Z",
                "\"not a date\"",
                "0",
                "\"9999-12-31\"",
                "\"0000-01-01\"",
                "\"2027-02-30\"",
            ],
        )
        .to_owned(),
        "client_certificate" => pick(
            rng,
            &[
                "{ cert = \"app.crt\", key = \"app.key\" }",
                "{ cert = \"app.pem\", algorithm = \"rs256\", send_x5c = true }",
                "{ cert = \"\" }",
                "{ key = \"k\" }",
                "{ cert = \"a\", algorithm = \"es256\" }",
                "\"-----BEGIN PRIVATE KEY-----\\nMIIE\"",
            ],
        )
        .to_owned(),
        "credential" => string_of(
            rng,
            &[
                "workload_identity",
                "managed_identity",
                "secret",
                "certificate",
                "x",
            ],
        ),
        "managed_identity" => {
            let guid = random_guid(rng);
            match rng.u8(..6) {
                0 => "\"system\"".to_owned(),
                1 => format!("{{ client_id = \"{guid}\" }}"),
                2 => format!("{{ object_id = \"{guid}\" }}"),
                3 => "{ resource_id = \"/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x\" }".to_owned(),
                4 => format!("{{ client_id = \"{guid}\", object_id = \"{guid}\" }}"),
                _ => string_of(rng, &["user", "", "/subscriptions/x"]),
            }
        }
        "provider" => string_of(rng, &["entra", "oauth2", "okta"]),
        "auth" => string_of(
            rng,
            &[
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
            ],
        ),
        "cloud" => string_of(rng, &["public", "gcc", "gcchigh", "dod", "china", "mars"]),
        "api" => string_of(rng, &["v1", "v2", "v3"]),
        "scope" | "audience" => string_of(
            rng,
            &["reports.read", "https://api.partner.example", "", "a b c"],
        ),
        "resource" => match rng.u8(..3) {
            0 => string_of(rng, URLS),
            1 => {
                let (first, second) = (string_of(rng, URLS), string_of(rng, URLS));
                format!("[{first}, {second}]")
            }
            _ => "[]".to_owned(),
        },
        "refresh_at" | "jitter" => pick(
            rng,
            &[
                "0.5", "0.1", "0.0", "1.0", "-0.1", "0.99999", "1e308", "nan", "inf", "-inf",
                "5e-324", "1", "0.45",
            ],
        )
        .to_owned(),
        "sinks" => {
            let sinks: Vec<String> = (0..rng.usize(..3)).map(|_| sink(rng)).collect();
            format!("[ {} ]", sinks.join(", "))
        }
        "schedule" => string_of(rng, CRONS),
        _ => random_toml(rng, 0),
    }
}

/// One `{ type = "file", … }` sink.
fn sink(rng: &mut Rng) -> String {
    let kind = string_of(rng, &["file", "file", "redis", ""]);
    let path = string_of(
        rng,
        &[
            "/var/lib/t/{name}.json",
            "/tmp/{name}",
            "{name}",
            "",
            "/",
            "relative/{name}.token",
            "/tmp/{name}{name}{name}",
            "/tmp/\u{1b}",
        ],
    );
    let mut sink = format!("{{ type = {kind}, path = {path}");
    if rng.bool() {
        let format = string_of(rng, &["json", "raw", "yaml"]);
        let _ = write!(sink, ", format = {format}");
    }
    if rng.bool() {
        let mode = pick(
            rng,
            &[
                "\"0600\"",
                "\"0640\"",
                "0o600",
                "\"0777\"",
                "\"9999\"",
                "-1",
                "99999999999",
                "\"\"",
                "384",
            ],
        );
        let _ = write!(sink, ", mode = {mode}");
    }
    sink.push_str(" }");
    sink
}

const DURATIONS: &[&str] = &[
    "5s",
    "0s",
    "1ms",
    "250ms",
    "15m",
    "1h",
    "2d",
    "1y",
    "-1s",
    "5",
    "",
    "s",
    "1.5s",
    "18446744073709551615s",
    "99999999999999999999d",
    "584942417355y",
    "1ns",
    "5 m",
    "PT5S",
];

const URLS: &[&str] = &[
    "https://login.microsoftonline.com",
    "https://login.microsoftonline.us/",
    "http://127.0.0.1:8080",
    "http://localhost:1234/",
    "http://[::1]:99",
    "http://login.example.com",
    "ftp://x",
    "https://",
    "https://a b",
    "https://[::1",
    "https://host:99999",
    "https://user:pass@host/",
    "https://auth.partner.example/oauth2/token?x=1#f",
    "http://169.254.169.254/metadata/identity/oauth2/token",
    "",
];

const CRONS: &[&str] = &[
    "0 0 6 * * *",
    "*/15 * * * *",
    "0 0 0 30 2 *",
    "0 0 0 29 2 *",
    "* * * * * * *",
    "@daily",
    "",
    "60 * * * *",
    "0-59/0 * * * *",
    "*/4294967296 * * * *",
    "0 0 0 ? * MON#5",
    "0 0 0 L * *",
    "0 0 0 31W * *",
    "59 59 23 31 12 *",
    "1-5000000000 * * * *",
];

/// Any TOML value: strings with escapes, numbers at every edge, dates, nested arrays and tables.
fn random_toml(rng: &mut Rng, depth: u32) -> String {
    match rng.u8(..10) {
        0 => {
            let text = tricky_text(rng, 10);
            toml_string(rng, &text)
        }
        1 => pick(
            rng,
            &[
                "0",
                "-0",
                "+1",
                "9223372036854775807",
                "-9223372036854775808",
                "9223372036854775808",
                "0x7fffffffffffffff",
                "0o777",
                "0b1",
                "1_000",
                "01",
            ],
        )
        .to_owned(),
        2 => pick(
            rng,
            &[
                "1e308", "-1e308", "1e309", "nan", "+inf", "-inf", "0.0", "5e-324", "6.02e23",
            ],
        )
        .to_owned(),
        3 => pick(rng, &["true", "false"]).to_owned(),
        4 => pick(
            rng,
            &[
                "1979-05-27T07:32:00Z",
                "1979-05-27",
                "07:32:00",
                "1979-05-27T00:32:00.999999-07:00",
                "9999-12-31T23:59:59Z",
                "0000-01-01",
            ],
        )
        .to_owned(),
        5 if depth < 3 => {
            let items: Vec<String> = (0..rng.usize(..4))
                .map(|_| random_toml(rng, depth + 1))
                .collect();
            format!("[{}]", items.join(", "))
        }
        6 if depth < 3 => {
            let fields: Vec<String> = (0..rng.usize(..3))
                .map(|_| {
                    let key = pick(rng, TENANT_KEYS);
                    format!("{key} = {}", random_toml(rng, depth + 1))
                })
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        7 => format!(
            "{}1{}",
            "[".repeat(rng.usize(10..200)),
            "]".repeat(rng.usize(10..200))
        ),
        8 => {
            let text: String = (0..rng.usize(..20_000)).map(|_| token_char(rng)).collect();
            format!("\"{text}\"")
        }
        _ => {
            let text = tricky_text(rng, 40);
            toml_string(rng, &text)
        }
    }
}

/// A key: a real one usually, else a quoted key with hostile characters, or a dotted key.
fn toml_key(rng: &mut Rng, keys: &[&str]) -> String {
    match rng.u8(..20) {
        0 => {
            let text = tricky_text(rng, 4);
            toml_string(rng, &text)
        }
        1 => format!("{}.{}", pick(rng, keys), pick(rng, TENANT_KEYS)),
        2 => "x.".repeat(rng.usize(1..300)) + "x",
        _ => pick(rng, keys).to_owned(),
    }
}

/// `header` and `count` lines of `key = value`, with a comment now and then.
fn config_section(rng: &mut Rng, out: &mut String, newline: &str, header: &str, keys: &[&str]) {
    let _ = write!(out, "{header}{newline}");
    for _ in 0..rng.usize(..10) {
        let key = toml_key(rng, keys);
        let value = toml_value(rng, &key);
        let _ = write!(out, "{key} = {value}{newline}");
        if rng.u8(..10) == 0 {
            let comment = tricky_text(rng, 5).replace(['\n', '\r'], " ");
            let _ = write!(out, "# {comment}{newline}");
        }
    }
}

fn generate_config(rng: &mut Rng, _: &()) -> Vec<u8> {
    let mut out = String::new();
    let newline = if rng.u8(..10) == 0 { "\r\n" } else { "\n" };
    if rng.u8(..3) == 0 {
        config_section(rng, &mut out, newline, "[server]", SERVER_KEYS);
    }
    if rng.u8(..3) == 0 {
        config_section(rng, &mut out, newline, "[daemon]", DAEMON_KEYS);
    }
    if rng.bool() {
        config_section(rng, &mut out, newline, "[defaults]", TENANT_KEYS);
    }
    for _ in 0..rng.usize(..5) {
        config_section(rng, &mut out, newline, "[[tenant]]", TENANT_KEYS);
        if rng.u8(..10) == 0 {
            let key = toml_key(rng, TENANT_KEYS);
            let _ = write!(out, "[tenant.{key}]{newline}");
        }
    }
    if rng.u8(..20) == 0 {
        let header = pick(
            rng,
            &[
                "[unknown]",
                "[[server]]",
                "[tenant]",
                "[\"\\u001b[2J\"]",
                "[defaults.sinks]",
            ],
        );
        config_section(rng, &mut out, newline, header, TENANT_KEYS);
    }
    out.into_bytes()
}

/// `config::parse`: no panic; every problem's message holds no control character and names a
/// line of the file, or none. Keys (printed next to the message by `check`) are held to the
/// same rule, as their own property.
fn check_config(bytes: &[u8], _: &()) -> Result<String, Violation> {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.matches('\n').count() + 1;
    match config::parse(&text, Path::new(CONFIG_PATH)) {
        Ok(config) => Ok(format!("ok, {} tenants", config.tenants.len().min(3))),
        Err(err) => {
            for problem in &err.problems {
                if let Some(c) = problem.message.chars().find(|c| c.is_control()) {
                    // Named by the message's first words: another message with the same flaw
                    // is another finding.
                    let kind = message_kind(&problem.message);
                    return Err(Violation::new(
                        &format!("a problem's message holds no control character ({kind})"),
                        format!("{c:?} in {}", escape_text(&problem.message)),
                    ));
                }
                if let Some(c) = problem
                    .key
                    .as_deref()
                    .and_then(|k| k.chars().find(|c| c.is_control()))
                {
                    return Err(Violation::new(
                        "a problem's key holds no control character",
                        format!(
                            "{c:?} in {}",
                            escape_text(problem.key.as_deref().unwrap_or_default())
                        ),
                    ));
                }
                if problem.line.is_some_and(|line| line == 0 || line > lines) {
                    return Err(Violation::new(
                        "a problem's line is a line of the file",
                        format!(
                            "line {:?} of {lines}: {}",
                            problem.line,
                            escape_text(&problem.message)
                        ),
                    ));
                }
            }
            let kind = |problem: Option<&config::Problem>| {
                problem
                    .map(|p| message_kind(&p.message))
                    .unwrap_or_default()
            };
            Ok(format!(
                "err ({} problems): {} .. {}",
                err.problems.len().min(3),
                kind(err.problems.first()),
                kind(err.problems.last())
            ))
        }
    }
}

/// What a message is about, without what it quotes: its first two words outside backticks and
/// quotes ("unknown field", "unknown variant", "cannot read"), so two keys with the same flaw are
/// one kind.
fn message_kind(message: &str) -> String {
    let mut unquoted = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in message.chars() {
        match quote {
            // `{:?}` escapes the quotes inside what it quotes.
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if matches!(c, '`' | '"' | '\'') => quote = Some(c),
            None => unquoted.push(c),
        }
    }
    unquoted
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|word| !word.is_empty())
        .take(2)
        // Some messages start with the key as written, which may be a long random word.
        .map(|word| &word[..word.len().min(16)])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn fuzz_config_parse() {
    fuzz(Target {
        name: "config::parse",
        seeds: config_seeds(),
        dictionary: TENANT_KEYS
            .iter()
            .chain(SERVER_KEYS)
            .chain(DAEMON_KEYS)
            .map(|k| format!("\n{k} = "))
            .chain(
                [
                    "\n[[tenant]]\n",
                    "\n[defaults]\n",
                    "\n[server]\n",
                    "\n[daemon]\n",
                    "\"\"\"",
                    "'''",
                    " = ",
                    "\"\\u001b[2J\" = 1\n",
                    "{ env = \"X\" }",
                    "1979-05-27T07:32:00Z",
                    "0o777",
                    "0x7fffffff",
                    "\"{name}\"",
                    "# comment\n",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            )
            .map(String::into_bytes)
            .collect(),
        max_len: 256 * 1024,
        context: |_| (),
        generate: generate_config,
        check: check_config,
    });
}

// ---------------------------------------------------------------------------------------------
// The checks themselves
// ---------------------------------------------------------------------------------------------

/// The property checks catch what they are for: a fuzz suite whose assertions cannot fail
/// proves nothing.
#[test]
fn checks_reject_what_they_should() {
    // A quoted run of the token is seen; numbers and the message's own words are not. Tokens are
    // found decoded and as written, in truncated bodies too.
    let message = "token endpoint answered 200 with JSON that is not a token response (99 bytes)";
    assert!(
        quoted_run(
            &format!("{message}: eyJhbGciOiJSUzI1NiJ9"),
            b"eyJhbGciOiJSUzI1NiJ9"
        )
        .is_some()
    );
    assert!(quoted_run(message, b"JSON that is not a token").is_none());
    assert!(quoted_run("expired 685477580 s before", b"685477580685477580").is_none());
    let body = br#"{"access_token":"abc\"defghijk","expires_in":1}"#;
    assert_eq!(
        access_tokens(body),
        vec![b"abc\"defghijk".to_vec(), br#"abc\"defghijk"#.to_vec()]
    );
    assert_eq!(
        access_tokens(br#"{"access_token": "truncated"#),
        vec![b"truncated".to_vec()]
    );

    // Hidden characters, the cap and every documented form of a secret.
    let secret = "Ab1~x y/z+é\"q&w";
    for text in ["a\u{1b}[2J", "a\u{202e}b", "a\u{9b}b", "a\u{200b}b"] {
        assert!(check_clean("text", text, &[]).is_err(), "{text:?}");
    }
    assert!(check_clean("text", &"x".repeat(MAX_TEXT_CHARS + 1), &[]).is_err());
    for form in [
        secret,
        "Ab1%7Ex+y%2Fz%2B%C3%A9%22q%26w",
        "Ab1%7ex+y%2fz%2b%c3%a9%22q%26w",
        "Ab1~x%20y%2Fz%2B%C3%A9%22q%26w",
        "Ab1~x%20y%2fz%2b%c3%a9%22q%26w",
        "Ab1~x y/z+é\\\"q&w",
    ] {
        assert!(
            check_clean("text", &format!("bad {form}."), &[secret]).is_err(),
            "{form}"
        );
    }
    assert!(
        check_clean(
            "text",
            "AADSTS7000215: Invalid client secret [REDACTED].",
            &[secret]
        )
        .is_ok()
    );

    // Config problems are grouped by what they say, not by what they quote.
    assert_eq!(
        message_kind("unknown field `\u{1b}`, expected `name`"),
        "unknown field"
    );
    assert_eq!(message_kind(r#""a\" b c" is not a tenant"#), "is not");

    // A panic inside a target is a finding, not a crash of the test.
    install_panic_hook();
    let target = Target {
        name: "panics",
        seeds: Vec::new(),
        dictionary: Vec::new(),
        max_len: 1,
        context: |_| (),
        generate: |_, _| Vec::new(),
        check: |input, _| {
            assert!(input.is_empty(), "not empty");
            Ok(String::new())
        },
    };
    let violation = execute(&target, b"x", &()).unwrap_err();
    assert!(
        violation.property.starts_with("no panic (panicked at"),
        "{}",
        violation.property
    );
    assert_eq!(violation.detail, "not empty");
    assert!(execute(&target, b"", &()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Target: Power BI answers (probe classification, GenerateToken, stored embed tokens, report
// reads and stored embed URLs)
// ---------------------------------------------------------------------------------------------

/// What a Power BI answer comes with besides its body: the status, the bearer token that was
/// sent (which a hostile server may echo), and the Entra token's expiry.
#[derive(Clone, Debug)]
struct PowerBiContext {
    status: u16,
    bearer: String,
    entra_expires_on: i64,
}

fn powerbi_context(rng: &mut Rng) -> PowerBiContext {
    PowerBiContext {
        status: *pick(
            rng,
            &[&200u16, &200, &401, &403, &404, &429, &500, &302, &400],
        ),
        bearer: jwt(rng, NOW + 3600),
        entra_expires_on: match rng.u8(..4) {
            0 => NOW - 60,
            1 => NOW + 1,
            _ => NOW + rng.i64(60..7200),
        },
    }
}

fn powerbi_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"value":[{"id":"3d9b93c6-0000-4801-a491-000000000001","isReadOnly":false,"name":"Sales"}]}"#,
        r#"{"error":{"code":"PowerBINotAuthorizedException","pbi.error":{"code":"PowerBINotAuthorizedException","parameters":{},"details":[],"exceptionCulprit":1}}}"#,
        r#"{"error":{"code":"TokenExpired","message":"Access token has expired, resubmit with a new access token"}}"#,
        r#"{"token":"H4sIAAAAAAAEAB2Wxw6sVgJ","tokenId":"49ae3742-0000-4c29-af52-000000000006","expiration":"2026-01-01T01:00:00Z"}"#,
        r#"{"token":"H4sI","token_id":"x","expiration":"2026-01-01T01:00:00Z","expires_on":1767229200,"issued_on":1767225600,"tenant":"contoso","embed":"sales","reports":["5b218778-0000-4b8a-9c7c-000000000004"],"datasets":[],"access_level":"View"}"#,
        r#"{"id":"5b218778-0000-4b8a-9c7c-000000000004","reportType":"PowerBIReport","name":"Sales","webUrl":"https://app.powerbi.com/groups/me/reports/5b218778-0000-4b8a-9c7c-000000000004","embedUrl":"https://app.powerbi.com/reportEmbed?reportId=5b218778-0000-4b8a-9c7c-000000000004&w=2&config=eyJ9%3d","datasetId":"cfafbeb1-0000-4d0c-896e-000000000003"}"#,
        r#"{"tenant":"contoso","embed":"sales","workspace":null,"embed_urls":{"5b218778-0000-4b8a-9c7c-000000000004":"https://app.powerbi.com/reportEmbed?reportId=5b218778-0000-4b8a-9c7c-000000000004"},"embed_urls_read_at":1767225600}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn generate_powerbi(rng: &mut Rng, context: &PowerBiContext) -> Vec<u8> {
    let echo = if rng.bool() {
        context.bearer.clone()
    } else {
        tricky_text(rng, 4)
    };
    let expiration =
        powerbi_tokend::clock::rfc3339_unix(NOW + rng.i64(-7200..7200)).unwrap_or_default();
    let guid = random_guid(rng);
    let text = tricky_text(rng, 3);
    let url = match rng.u8(..3) {
        0 => format!("https://app.powerbi.com/reportEmbed?reportId={guid}&config={text}"),
        1 => format!("http://{text}/reportEmbed"),
        _ => text.clone(),
    };
    let fields = [
        ("token".to_owned(), json_string(&echo)),
        ("tokenId".to_owned(), json_string(&guid)),
        ("embedUrl".to_owned(), json_string(&url)),
        ("id".to_owned(), json_string(REPORT_ID)),
        ("expiration".to_owned(), json_string(&expiration)),
        (
            "error".to_owned(),
            format!(
                r#"{{"code":{},"message":{}}}"#,
                json_string(&echo),
                json_string(&text)
            ),
        ),
    ];
    json_object(rng, &fields)
}

/// The report the Power BI target's embed reads and stores.
const REPORT_ID: &str = "5b218778-0000-4b8a-9c7c-000000000004";

/// An embed URL the daemon accepted: https (http only on loopback), bounded, URL characters.
fn check_embed_url_kept(url: &str) -> Result<(), Violation> {
    let bounded = url.len() <= powerbi_tokend::powerbi::embed_urls::MAX_EMBED_URL
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'<>#`{}|\\^".contains(&b));
    let loopback_http = ["http://127.", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| url.starts_with(prefix));
    if bounded && (url.starts_with("https://") || loopback_http) {
        Ok(())
    } else {
        Err(Violation::new(
            "an embed URL is https (or loopback http), short and plain",
            url.to_owned(),
        ))
    }
}

/// Reads `body` as a report answer and as a stored document with embed URLs; every URL kept
/// passes [`check_embed_url_kept`]. Returns whether each gave a URL.
fn check_embed_urls(
    body: &[u8],
    tenant: &config::TenantConfig,
    embed: &config::EmbedConfig,
) -> Result<(bool, bool), Violation> {
    use powerbi_tokend::powerbi::embed_urls;
    let read = embed_urls::parse_report(body, REPORT_ID).ok();
    let stored = embed_urls::parse_stored(body, tenant, embed, NOW);
    for url in read.iter().map(String::as_str).chain(stored.url(REPORT_ID)) {
        check_embed_url_kept(url)?;
    }
    Ok((read.is_some(), stored.url(REPORT_ID).is_some()))
}

fn check_powerbi(body: &[u8], context: &PowerBiContext) -> Result<String, Violation> {
    use powerbi_tokend::client::ApiAnswer;
    use powerbi_tokend::powerbi::{answer as api_answer, embed};
    let answer = ApiAnswer {
        status: context.status,
        request_id: None,
        error_info: None,
        retry_after: None,
        www_authenticate: None,
        body: body.to_vec(),
    };
    let classified = api_answer::classify(&answer, &[&context.bearer]);
    if let Err(failure) = &classified {
        let shown = format!("{} {:?}", failure.message, failure.oauth_error);
        if shown.contains(&context.bearer) {
            return Err(Violation::new("the bearer token is never shown", shown));
        }
        if failure
            .oauth_error
            .as_ref()
            .is_some_and(|code| code.chars().count() > 96)
        {
            return Err(Violation::new("error codes are short", shown));
        }
    }
    let now = unix_to_system(NOW);
    let made = embed::parse_response(body, now, context.entra_expires_on);
    if let Ok(token) = &made {
        if token.expires_on > context.entra_expires_on || token.expires_on <= NOW {
            return Err(Violation::new(
                "an embed token expires after now and never after the Entra token",
                format!("{} (entra {})", token.expires_on, context.entra_expires_on),
            ));
        }
        let _ = token.refresh_point(0.5);
    }
    let tenant = config::TenantConfig::entra(
        "contoso",
        "contoso.example.com",
        "c",
        config::SecretSource::Env("S".to_owned()),
        "https://login.microsoftonline.com",
        std::path::PathBuf::from("/tmp/contoso.json"),
    );
    let embed = config::EmbedConfig {
        name: "sales".to_owned(),
        reports: vec!["5b218778-0000-4b8a-9c7c-000000000004".to_owned()],
        datasets: Vec::new(),
        target_workspaces: Vec::new(),
        access_level: config::AccessLevel::View,
        lifetime: None,
        xmla_read_only: false,
        workspace: None,
        identities: Vec::new(),
        datasource_identities: Vec::new(),
        sinks: Vec::new(),
    };
    let (read, stored_url) = check_embed_urls(body, &tenant, &embed)?;
    let stored = embed::parse_existing(body, &tenant, &embed);
    if let Some(token) = &stored {
        if token.issued_on >= token.expires_on {
            return Err(Violation::new(
                "a stored embed token was issued before it expires",
                format!("{} {}", token.issued_on, token.expires_on),
            ));
        }
        let _ = token.refresh_point(0.5);
    }
    Ok(format!(
        "{}:{}:{}:{}:{}",
        classified.map_or_else(|f| f.reason.as_str().to_owned(), |()| "ok".to_owned()),
        made.is_ok(),
        stored.is_some(),
        read,
        stored_url
    ))
}

#[test]
fn fuzz_powerbi_answers() {
    fuzz(Target {
        name: "powerbi_answers",
        seeds: powerbi_seeds(),
        dictionary: [
            "\"pbi.error\"",
            "\"tokenId\"",
            "\"embedUrl\"",
            "\"embed_urls\"",
            "\"embed_urls_read_at\"",
            "http://127.0.0.1",
            "\"expiration\"",
            "T00:00:00Z",
            "+14:00",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        max_len: 64 * 1024,
        context: powerbi_context,
        generate: generate_powerbi,
        check: check_powerbi,
    });
}
