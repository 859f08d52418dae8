use super::*;
use crate::error::{ErrorClass, Reason};
use std::time::{Duration, UNIX_EPOCH};

const NOW: i64 = 1_767_225_600;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW as u64)
}

fn failure(message: &str) -> Option<Box<RefreshError>> {
    Some(Box::new(RefreshError::local(
        ErrorClass::Permanent,
        Reason::InvalidClient,
        message,
    )))
}

/// Adds a tenant whose token expires `left` seconds from [`NOW`] (none for `None`), failing
/// permanently with `error` when given.
fn add(registry: &Registry, name: &str, left: Option<i64>, error: Option<&str>) {
    let handle = registry.insert(name);
    let mut status = status::lock(&handle);
    status.first_attempt_done = true;
    status.token.expires_on = left.map(|left| NOW + left);
    status.token.last_error = error.and_then(failure);
}

/// The tenant names of the table, in order.
fn names(html: &str) -> Vec<String> {
    html.lines()
        .filter_map(|line| line.strip_prefix("<tr><td>"))
        .map(|rest| rest.split("</td>").next().unwrap_or_default().to_owned())
        .collect()
}

fn page(registry: &Registry, query: &str) -> String {
    render(registry, &PageQuery::parse(Some(query)), now())
}

#[test]
fn failing_tenants_come_first_then_the_soonest_expiry() {
    let registry = Registry::new();
    add(&registry, "a-late", Some(3000), None);
    add(&registry, "b-soon", Some(100), None);
    add(
        &registry,
        "c-broken-with-token",
        Some(2000),
        Some("bad secret"),
    );
    add(
        &registry,
        "d-broken-without-token",
        None,
        Some("bad secret"),
    );
    add(&registry, "e-pending", None, None);
    status::lock(&registry.insert("e-pending")).first_attempt_done = false;
    let html = page(&registry, "");
    assert_eq!(
        names(&html),
        [
            "d-broken-without-token",
            "c-broken-with-token",
            "b-soon",
            "a-late",
            "e-pending"
        ]
    );
    assert!(
        html.contains("5 tenants</a>: <a href=\"?state=failing\" class=\"bad\">2 failing</a>"),
        "{html}"
    );
    assert!(html.contains("2 misconfigured"), "{html}");
    assert!(
        html.contains("<b class=\"bad\">invalid_client</b>"),
        "{html}"
    );
}

#[test]
fn the_heap_selects_what_a_full_sort_would_on_every_page() {
    let registry = Registry::new();
    let mut expected = Vec::new();
    for i in 0..1000_i64 {
        let name = format!("t{i:04}");
        let left = (i * 7919) % 500 - 50;
        let failing = i % 37 == 0;
        add(&registry, &name, Some(left), failing.then_some("no"));
        expected.push(((!failing, left), name));
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, name)| name).collect();
    let mut seen = Vec::new();
    for page_number in 1..=5 {
        let html = page(&registry, &format!("page={page_number}"));
        seen.extend(names(&html));
        assert_eq!(
            html.contains("rel=\"next\""),
            page_number < 5,
            "{page_number}"
        );
    }
    assert_eq!(seen, expected);
    let html = page(&registry, "page=3");
    assert!(html.contains("Tenants 401–600 of 1000 matching."), "{html}");
    assert!(html.contains("href=\"?page=2\""), "{html}");
    assert!(html.contains("href=\"?page=4\""), "{html}");
}

#[test]
fn the_filter_keeps_matching_names_and_states_and_the_links_keep_the_filter() {
    let registry = Registry::new();
    for i in 0..450 {
        let name = format!("{}-{i:03}", if i % 2 == 0 { "Contoso" } else { "fabrikam" });
        add(&registry, &name, Some(600 + i), (i % 5 == 0).then_some("x"));
    }
    let html = page(&registry, "q=CONTOSO");
    let shown = names(&html);
    assert_eq!(shown.len(), ROWS_PER_PAGE);
    assert!(shown.iter().all(|name| name.starts_with("Contoso")));
    assert!(html.contains("of 225 matching"), "{html}");
    assert!(html.contains("href=\"?q=CONTOSO&amp;page=2\""), "{html}");
    let html = page(&registry, "q=fabrikam&state=misconfigured");
    let shown = names(&html);
    // Odd i divisible by 5: 5, 15, …, 445.
    assert_eq!(shown.len(), 45, "{html}");
    assert!(shown.iter().all(|name| name.starts_with("fabrikam")));
    assert!(html.contains("<option value=\"misconfigured\" selected>"));
    let html = page(&registry, "state=failing");
    assert_eq!(names(&html).len(), 90);
    let html = page(&registry, "q=nobody");
    assert!(html.contains("id=\"empty\""), "{html}");
}

#[test]
fn text_from_servers_and_queries_is_escaped() {
    let registry = Registry::new();
    add(
        &registry,
        "contoso",
        None,
        Some("AADSTS7000215: <script>alert('x')</script> & \"more\"\u{1b}[31m"),
    );
    let html = page(&registry, "");
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains(
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot; [31m"
        ),
        "{html}"
    );
    assert!(!html.contains('\u{1b}'));
    let html = page(
        &registry,
        "q=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E&state=%3Cb%3E",
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{html}"
    );
    assert!(html.contains("unknown state ignored"));
}

#[test]
fn long_messages_are_cut() {
    let registry = Registry::new();
    let long = "x".repeat(1000);
    add(&registry, "contoso", None, Some(&long));
    let html = page(&registry, "");
    assert!(html.contains(&format!("{}…", "x".repeat(MAX_MESSAGE_CHARS))));
    assert!(!html.contains(&"x".repeat(MAX_MESSAGE_CHARS + 1)));
}

#[test]
fn hostile_queries_parse_without_failing() {
    let parsed = PageQuery::parse(Some("q=%FF%FE&page=99999999999999999999999&state=&x=%"));
    assert_eq!(parsed.page, 1);
    assert_eq!(parsed.state, StateFilter::Any);
    assert_eq!(parsed.name, "\u{fffd}\u{fffd}");
    let parsed = PageQuery::parse(Some(&format!("q={}&page=0", "a".repeat(10_000))));
    assert_eq!(parsed.name.len(), MAX_FILTER_CHARS);
    assert_eq!(parsed.page, 1);
    // A page far past the end renders an empty table with a way back, and allocates nothing
    // for the pages it skips.
    let registry = Registry::new();
    add(&registry, "contoso", Some(60), None);
    let html = page(&registry, &format!("page={}", usize::MAX));
    assert!(html.contains("id=\"empty\""));
    assert!(html.contains("rel=\"prev\" href=\"?page=1\""), "{html}");
}

#[test]
fn times_read_as_durations() {
    assert_eq!(human(12), "12s");
    assert_eq!(human(250), "4m 10s");
    assert_eq!(human(3900), "1h 05m");
    assert_eq!(human(2 * 86_400 + 3 * 3600 + 5), "2d 3h");
    assert_eq!(human(-5), "0s");
    let mut html = String::new();
    expiry_cell(&mut html, Some(NOW - 90), NOW);
    assert!(html.contains("expired 1m 30s ago"), "{html}");
    html.clear();
    expiry_cell(&mut html, Some(i64::MAX), i64::MIN);
    assert!(html.contains("d "), "{html}");
}
