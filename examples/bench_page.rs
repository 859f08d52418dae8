//! Benchmark: the admin page (`GET /`) at a large fleet, against floors measured in the same run.
//!
//! ```text
//! cargo run --release --example bench_page -- [TENANTS] [OUT_FILE]
//! ```
//!
//! Fills a status registry with TENANTS synthetic tenants (default 100000; the fleet of
//! `bench_metrics`: every 100th misconfigured), then renders page 1 of the admin page (the
//! failing tenants first, 200 rows), page 1 filtered by a name substring, and page 1 of
//! `state=failing`, and reports the fastest and the median of 11 renders of each. Then two
//! floors:
//!
//! * `rows`: the same number of rows written with a trivial `format!` (name, state, expiry),
//!   from names and states already at hand: what the output alone costs;
//! * `pass`: a pass over every tenant's status handle, locking each and reading its state and
//!   expiry, plus those rows: what any page that counts the states and picks the failing
//!   tenants of the whole fleet must do at least.
//!
//! and the ratios of page 1 to each. With OUT_FILE, writes page 1 there.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use powerbi_tokend::http::page::{self, PageQuery, ROWS_PER_PAGE};
use powerbi_tokend::status::{self, TenantState};

#[path = "common/fleet.rs"]
mod fleet;

use fleet::BoxError;

const RUNS: usize = 11;

fn main() -> Result<(), BoxError> {
    let (tenants, out_file) = fleet::arguments(100_000)?;
    let registry = fleet::fleet(tenants);
    let names: Vec<String> = (1..=tenants).map(|i| format!("tenant{i:06}")).collect();
    let handles: Vec<_> = names.iter().map(|name| registry.insert(name)).collect();
    println!("tenants: {tenants}, rows per page: {ROWS_PER_PAGE}");
    println!("what                       bytes  fastest     median of {RUNS}");

    let mut page_one = String::new();
    let mut page_one_median = Duration::ZERO;
    for (label, query) in [
        ("page 1", ""),
        ("page 1, q=tenant0001", "q=tenant0001"),
        ("page 1, state=failing", "state=failing"),
    ] {
        let query = PageQuery::parse(Some(query));
        let (html, fastest, median) =
            measure(|| page::render(&registry, &query, SystemTime::now()));
        report(label, html.len(), fastest, median);
        if page_one.is_empty() {
            page_one = html;
            page_one_median = median;
        }
    }

    let now = SystemTime::now();
    let (rows, fastest, rows_median) =
        measure(|| trivial_rows(&names[..ROWS_PER_PAGE.min(tenants)]));
    report("floor: rows", rows.len(), fastest, rows_median);
    let (pass, fastest, pass_median) = measure(|| {
        let mut failing = 0_usize;
        let mut soonest = i64::MAX;
        for handle in &handles {
            let status = status::lock(handle);
            if status.state(now) != TenantState::Healthy {
                failing += 1;
            }
            soonest = soonest.min(status.token.expires_on.unwrap_or(i64::MAX));
        }
        black_box((failing, soonest));
        trivial_rows(&names[..ROWS_PER_PAGE.min(tenants)])
    });
    report("floor: pass + rows", pass.len(), fastest, pass_median);
    println!(
        "page 1 / floor rows: {:.1}, page 1 / floor pass + rows: {:.2}",
        ratio(page_one_median, rows_median),
        ratio(page_one_median, pass_median)
    );
    if let Some(path) = out_file {
        std::fs::write(path, &page_one)?;
    }
    Ok(())
}

/// Runs `render` once untimed (caches, the allocator's first pages), then [`RUNS`] times: its
/// last output, the fastest and the median time.
fn measure(mut render: impl FnMut() -> String) -> (String, Duration, Duration) {
    let mut times = Vec::with_capacity(RUNS);
    let mut output = black_box(render());
    for _ in 0..RUNS {
        let started = Instant::now();
        output = black_box(render());
        times.push(started.elapsed());
    }
    times.sort();
    (output, times[0], times[RUNS / 2])
}

/// The trivial floor: one `format!`ted row per name.
fn trivial_rows(names: &[String]) -> String {
    let mut html = String::new();
    for name in names {
        html.push_str(&format!(
            "<tr><td>{name}</td><td>healthy</td><td>42m 10s</td></tr>\n"
        ));
    }
    html
}

fn report(label: &str, bytes: usize, fastest: Duration, median: Duration) {
    println!(
        "{label:<22} {bytes:>10} {:>8.3} ms {:>8.3} ms",
        ms(fastest),
        ms(median)
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
