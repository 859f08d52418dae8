//! `GET /`: the admin page, one server-rendered HTML document for a person at a browser.
//!
//! A summary line (tenants by state), a filter form (`?q=` a name substring, `?state=` a state
//! or `failing`), and a table of at most [`ROWS_PER_PAGE`] tenants (`?page=` for the rest):
//! failing tenants first, then by soonest expiry, each with its state, time to expiry, next
//! refresh, last error, probe result and embed tokens. Links to `/metrics` and `/status`.
//!
//! Filtering and paging happen here, on the server, so the page works without JavaScript and
//! has none: its Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]) allows no script, no
//! image, no frame and no outside request, only the inline style sheet.
//!
//! Built for a hundred thousand tenants: one pass over the registry counts the states and
//! keeps, in a bounded heap, only the rows up to the requested page; a tenant's name is copied
//! and its handle kept only when it enters that heap, and only the rows shown are read in full.
//! Every text from outside (error messages from Entra or Power BI, the filter echoed back) is
//! HTML-escaped; no token, secret or identity is ever read here.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::SystemTime;

use crate::clock;
use crate::error::RefreshError;
use crate::status::{self, Registry, StatusHandle, TenantState, TenantStatus, TokenStatus};

/// Rows on one page: enough to show every failing tenant of a bad day, few enough that the
/// page renders in milliseconds and a browser lays it out at once.
pub const ROWS_PER_PAGE: usize = 200;

/// The longest `?q=` kept, in characters; tenant names are shorter.
const MAX_FILTER_CHARS: usize = 100;

/// The longest error message shown in a cell, in characters; `/status` has the whole line.
const MAX_MESSAGE_CHARS: usize = 160;

/// The page's policy: nothing but its own inline style; forms submit to the page itself.
/// `form-action`, `base-uri` and `frame-ancestors` do not fall back to `default-src`, so they
/// are named.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Which states `?state=` keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// Every state (no `?state=`, or an empty one).
    #[default]
    Any,
    /// Every state but healthy and pending (`?state=failing`).
    Failing,
    /// One state.
    Only(TenantState),
}

impl StateFilter {
    /// The `?state=` value; `None` for a value that names no state.
    fn parse(value: &str) -> Option<StateFilter> {
        match value {
            "" | "any" => Some(StateFilter::Any),
            "failing" => Some(StateFilter::Failing),
            other => TenantState::ALL
                .into_iter()
                .find(|state| state.as_str() == other)
                .map(StateFilter::Only),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StateFilter::Any => "",
            StateFilter::Failing => "failing",
            StateFilter::Only(state) => state.as_str(),
        }
    }

    fn keeps(self, state: TenantState) -> bool {
        match self {
            StateFilter::Any => true,
            StateFilter::Failing => is_failing(state),
            StateFilter::Only(only) => only == state,
        }
    }
}

/// What the query string asks for. Lenient: an unknown key is ignored, a bad `page` is page 1,
/// an unknown state is reported on the page; nothing in it can fail the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// `?q=`: a substring of the tenant name (ASCII case ignored), at most
    /// [`MAX_FILTER_CHARS`] characters, trimmed.
    pub name: String,
    /// `?state=`.
    pub state: StateFilter,
    /// `?state=` named no state: said on the page, and nothing is filtered by it.
    pub unknown_state: bool,
    /// `?page=`, from 1.
    pub page: usize,
}

impl PageQuery {
    /// Reads a raw query string (`None` without one). Bytes that are not UTF-8 become U+FFFD.
    pub fn parse(query: Option<&str>) -> PageQuery {
        let mut parsed = PageQuery {
            page: 1,
            ..PageQuery::default()
        };
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        for (key, value) in pairs {
            match &*key {
                "q" => parsed.name = value.trim().chars().take(MAX_FILTER_CHARS).collect(),
                "state" => match StateFilter::parse(value.trim()) {
                    Some(state) => parsed.state = state,
                    None => parsed.unknown_state = true,
                },
                "page" => parsed.page = value.trim().parse().unwrap_or(1).max(1),
                _ => {}
            }
        }
        parsed
    }

    fn keeps(&self, name: &str, state: TenantState) -> bool {
        self.state.keeps(state) && contains_ignoring_ascii_case(name, &self.name)
    }

    /// The query string of this filter at `page`, for the pager's links.
    fn link(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::for_suffix(String::from("?"), 1);
        if !self.name.is_empty() {
            query.append_pair("q", &self.name);
        }
        if self.state != StateFilter::Any {
            query.append_pair("state", self.state.as_str());
        }
        query.append_pair("page", &page.to_string());
        query.finish()
    }
}

fn contains_ignoring_ascii_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Whether a state is one an operator has to look at (everything but healthy and pending).
fn is_failing(state: TenantState) -> bool {
    !matches!(state, TenantState::Healthy | TenantState::Pending)
}

/// Where a tenant stands in the table: failing tenants first, and among them those without a
/// token first; then by soonest expiry; the others after, those without a token (pending) last.
/// Ties go by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    /// `false` sorts first: failing.
    fine: bool,
    /// The token's expiry, or the bound that puts a tenant without one where it belongs.
    expiry: i64,
}

impl SortKey {
    fn of(state: TenantState, expires_on: Option<i64>) -> SortKey {
        let fine = !is_failing(state);
        let missing = if fine { i64::MAX } else { i64::MIN };
        SortKey {
            fine,
            expiry: expires_on.unwrap_or(missing),
        }
    }
}

/// A tenant kept for the table: its name copied and its handle held, nothing else.
struct Row {
    key: SortKey,
    name: String,
    handle: StatusHandle,
}

impl Row {
    fn order(&self, key: SortKey, name: &str) -> Ordering {
        (self.key, self.name.as_str()).cmp(&(key, name))
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.order(other.key, &other.name).is_eq()
    }
}
impl Eq for Row {}
impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Row {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other.key, &other.name)
    }
}

/// What one pass over the registry found.
struct Selection {
    /// Tenants by state, indexed like [`TenantState::ALL`], over every tenant.
    counts: [usize; TenantState::ALL.len()],
    /// Tenants the filter keeps.
    matched: usize,
    /// The first `page × ROWS_PER_PAGE` of them in table order (fewer if fewer match).
    rows: Vec<Row>,
}

/// One pass: counts every state, and keeps the best `keep` rows the filter lets through in a
/// max-heap whose top is the worst row kept, so a tenant that cannot make the page costs one
/// comparison and no copy.
fn select(registry: &Registry, query: &PageQuery, keep: usize, now: SystemTime) -> Selection {
    let mut counts = [0; TenantState::ALL.len()];
    let mut matched = 0;
    // Not `with_capacity(keep)`: `keep` comes from `?page=`, the heap grows with what it holds.
    let mut heap: BinaryHeap<Row> = BinaryHeap::with_capacity(keep.min(1024));
    registry.visit(|name, handle| {
        let (state, expires_on) = {
            let status = status::lock(handle);
            (status.state(now), status.token.expires_on)
        };
        if let Some(index) = TenantState::ALL.iter().position(|s| *s == state) {
            counts[index] += 1;
        }
        if !query.keeps(name, state) {
            return;
        }
        matched += 1;
        let key = SortKey::of(state, expires_on);
        let row = || Row {
            key,
            name: name.to_owned(),
            handle: handle.clone(),
        };
        if heap.len() < keep {
            heap.push(row());
        } else if let Some(mut worst) = heap.peek_mut()
            && worst.order(key, name).is_gt()
        {
            *worst = row();
        }
    });
    Selection {
        counts,
        matched,
        rows: heap.into_sorted_vec(),
    }
}

/// The whole page for `query` at `now`.
pub fn render(registry: &Registry, query: &PageQuery, now: SystemTime) -> String {
    let keep = query.page.saturating_mul(ROWS_PER_PAGE);
    let selection = select(registry, query, keep, now);
    let first = query.page.saturating_sub(1).saturating_mul(ROWS_PER_PAGE);
    let shown = selection.rows.get(first..).unwrap_or_default();
    let mut html = String::with_capacity(8192 + shown.len() * 640);
    html.push_str(HEAD);
    summary(&mut html, &selection.counts);
    form(&mut html, query);
    if shown.is_empty() {
        html.push_str("<p id=\"empty\">No tenant on this page matches.</p>\n");
    } else {
        html.push_str(TABLE_HEAD);
        let now_unix = clock::unix_seconds(now);
        for row in shown {
            tenant_row(
                &mut html,
                &row.name,
                &status::lock(&row.handle),
                now,
                now_unix,
            );
        }
        html.push_str("</tbody></table>\n");
    }
    pager(&mut html, query, selection.matched, first, shown.len());
    html.push_str(FOOT);
    html
}

const HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>powerbi-tokend</title><style>\
body{font:14px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#222}\
h1{font-size:1.3rem;margin:0 0 .5rem}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f3f3f3;white-space:nowrap}\
td.num{white-space:nowrap}\
.bad{color:#a00;font-weight:600}.warn{color:#a60}.ok{color:#070}\
.msg{color:#555;font-size:.9em}\
form{margin:.75rem 0}input,select,button{font:inherit}\
nav a{margin-right:1rem}\
</style></head><body>\n<h1>powerbi-tokend</h1>\n";

const TABLE_HEAD: &str = "<table id=\"tenants\"><thead><tr><th>tenant</th><th>state</th>\
<th>expires in</th><th>next refresh</th><th>last error</th><th>api probe</th>\
<th>embed tokens</th></tr></thead><tbody>\n";

const FOOT: &str = "<nav><a href=\"metrics\">/metrics</a><a href=\"status\">/status</a>\
<a href=\"healthz\">/healthz</a><a href=\"readyz\">/readyz</a></nav>\n</body></html>\n";

/// `12 tenants: 10 healthy, 1 misconfigured, 1 retrying`, each count a link to its filter.
fn summary(html: &mut String, counts: &[usize; TenantState::ALL.len()]) {
    let total: usize = counts.iter().sum();
    let failing: usize = TenantState::ALL
        .iter()
        .zip(counts)
        .filter(|(state, _)| is_failing(**state))
        .map(|(_, count)| count)
        .sum();
    let _ = write!(
        html,
        "<p id=\"summary\"><a href=\"?\">{total} tenants</a>: <a href=\"?state=failing\" class=\"{}\">{failing} failing</a>",
        if failing > 0 { "bad" } else { "ok" }
    );
    for (state, count) in TenantState::ALL.iter().zip(counts) {
        if *count > 0 {
            let _ = write!(
                html,
                ", <a href=\"?state={0}\" class=\"{1}\">{count} {0}</a>",
                state.as_str(),
                state_class(*state)
            );
        }
    }
    html.push_str("</p>\n");
}

/// The filter: a GET form, so it works without script and its result can be bookmarked.
fn form(html: &mut String, query: &PageQuery) {
    html.push_str(
        "<form method=\"get\" id=\"filter\"><input type=\"search\" name=\"q\" \
         placeholder=\"tenant name contains\" maxlength=\"100\" value=\"",
    );
    escape(html, &query.name);
    html.push_str("\"> <select name=\"state\"><option value=\"\">any state</option>");
    let options = std::iter::once(StateFilter::Failing)
        .chain(TenantState::ALL.into_iter().map(StateFilter::Only));
    for option in options {
        let selected = if option == query.state {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<option value=\"{0}\"{selected}>{0}</option>",
            option.as_str()
        );
    }
    html.push_str("</select> <button type=\"submit\">Filter</button> <a href=\"?\">clear</a>");
    if query.unknown_state {
        html.push_str(" <span class=\"warn\">unknown state ignored</span>");
    }
    html.push_str("</form>\n");
}

/// `Tenants 201–400 of 1234` and the links to the pages around.
fn pager(html: &mut String, query: &PageQuery, matched: usize, first: usize, shown: usize) {
    html.push_str("<p id=\"pager\">");
    if shown > 0 {
        let _ = write!(
            html,
            "Tenants {}–{} of {matched} matching. ",
            first + 1,
            first + shown
        );
    } else {
        let _ = write!(html, "{matched} matching. ");
    }
    if query.page > 1 {
        let previous = query.page.min(matched.div_ceil(ROWS_PER_PAGE).max(2)) - 1;
        html.push_str("<a rel=\"prev\" href=\"");
        escape(html, &query.link(previous));
        html.push_str("\">« previous</a> ");
    }
    if first + shown < matched {
        html.push_str("<a rel=\"next\" href=\"");
        escape(html, &query.link(query.page.saturating_add(1)));
        html.push_str("\">next »</a>");
    }
    html.push_str("</p>\n");
}

fn state_class(state: TenantState) -> &'static str {
    match state {
        TenantState::Healthy => "ok",
        TenantState::Pending | TenantState::Retrying | TenantState::ApiFailing => "warn",
        TenantState::Misconfigured | TenantState::Expired | TenantState::ApiDenied => "bad",
    }
}

/// One `<tr>`. Reads the status it is given and nothing else.
fn tenant_row(html: &mut String, name: &str, status: &TenantStatus, now: SystemTime, unix: i64) {
    let state = status.state(now);
    html.push_str("<tr><td>");
    escape(html, name);
    let _ = write!(
        html,
        "</td><td class=\"{}\">{}</td><td class=\"num\">",
        state_class(state),
        state.as_str()
    );
    expiry_cell(html, status.token.expires_on, unix);
    html.push_str("</td><td class=\"num\">");
    next_refresh_cell(html, &status.token, now);
    html.push_str("</td><td>");
    if let Some(error) = &status.token.last_error {
        error_cell(html, error);
    }
    html.push_str("</td><td>");
    match &status.api_probe {
        None => html.push('—'),
        Some(probe) => match &probe.failure {
            None => html.push_str("<span class=\"ok\">ok</span>"),
            Some(failure) => error_cell(html, failure),
        },
    }
    html.push_str("</td><td>");
    embeds_cell(html, status, unix);
    html.push_str("</td></tr>\n");
}

fn expiry_cell(html: &mut String, expires_on: Option<i64>, now: i64) {
    let Some(expires_on) = expires_on else {
        html.push('—');
        return;
    };
    let left = expires_on.saturating_sub(now);
    let title = clock::rfc3339_unix(expires_on).unwrap_or_default();
    if left > 0 {
        let _ = write!(html, "<span title=\"{title}\">{}</span>", human(left));
    } else {
        let _ = write!(
            html,
            "<span class=\"bad\" title=\"{title}\">expired {} ago</span>",
            human(left.saturating_neg())
        );
    }
}

fn next_refresh_cell(html: &mut String, token: &TokenStatus, now: SystemTime) {
    let Some(next) = token.next_refresh else {
        html.push('—');
        return;
    };
    let title = clock::rfc3339_unix(clock::unix_seconds(next)).unwrap_or_default();
    match next.duration_since(now) {
        Ok(wait) => {
            let seconds = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
            let _ = write!(html, "<span title=\"{title}\">in {}</span>", human(seconds));
        }
        Err(_) => {
            let _ = write!(html, "<span title=\"{title}\">due</span>");
        }
    }
}

/// `invalid_client AADSTS7000215` in bold, then the first [`MAX_MESSAGE_CHARS`] of the
/// message, escaped (it is the server's text).
fn error_cell(html: &mut String, error: &RefreshError) {
    let _ = write!(html, "<b class=\"bad\">{}</b>", error.reason.as_str());
    if let Some(code) = error.aadsts_code() {
        let _ = write!(html, " {code}");
    } else if let Some(status) = error.status {
        let _ = write!(html, " HTTP {status}");
    }
    html.push_str("<br><span class=\"msg\">");
    let mut chars = error.message.chars();
    let short: String = chars.by_ref().take(MAX_MESSAGE_CHARS).collect();
    escape(html, &short);
    if chars.next().is_some() {
        html.push('…');
    }
    html.push_str("</span>");
}

/// Each embed token: `sales 42m` when fine, its failure's reason when not.
fn embeds_cell(html: &mut String, status: &TenantStatus, now: i64) {
    if status.embeds.is_empty() {
        html.push('—');
        return;
    }
    for (index, embed) in status.embeds.iter().enumerate() {
        if index > 0 {
            html.push_str("<br>");
        }
        escape(html, &embed.name);
        html.push(' ');
        match &embed.token.last_error {
            Some(error) => {
                let _ = write!(html, "<b class=\"bad\">{}</b>", error.reason.as_str());
            }
            None => expiry_cell(html, embed.token.expires_on, now),
        }
    }
}

/// `2d 3h`, `1h 05m`, `4m 10s`, `12s`: the two largest units of a non-negative duration.
fn human(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Appends `text` with the five characters that matter in HTML text and attribute values
/// escaped, and control characters (which no page needs) as spaces.
pub fn escape(html: &mut String, text: &str) {
    let special = |c: char| matches!(c, '&' | '<' | '>' | '"' | '\'') || c.is_control();
    if !text.contains(special) {
        html.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            c if c.is_control() => html.push(' '),
            c => html.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
