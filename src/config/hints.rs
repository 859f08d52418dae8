//! Hints added to the parser's messages: the key a misspelt one was probably meant to be, and
//! the form a duration takes.
//!
//! serde names an unknown key with the whole list of the section's keys (25 for a tenant); a
//! user who typed `scheduel` wants to read `did you mean `schedule`?`, not to scan the list.

/// Keys whose value is a duration written as a string with a unit (`"5s"`, `"10m"`, `"1h"`).
const DURATION_KEYS: &[&str] = &[
    "watch_interval",
    "connect_timeout",
    "request_timeout",
    "command_timeout",
    "permanent_retry_interval",
    "shutdown_grace",
    "check_interval",
    "refresh_interval",
    "lease_ttl",
    "lifetime",
    "interval",
];

/// `message`, the parser's complaint about `key`, with a hint where one helps: a close match
/// for an unknown key or value, the form of a duration given as a number.
pub(super) fn explain(key: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown(rest, "field", message);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown(rest, "variant", message);
    }
    let number = message.starts_with("invalid type: integer")
        || message.starts_with("invalid type: floating point");
    if number && message.ends_with("expected a string") && DURATION_KEYS.contains(&key) {
        return format!(
            "{message}; a duration is a string with a unit, e.g. {key} = \"30s\", \"5m\" or \"1h\""
        );
    }
    message.to_owned()
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (`rest` follows the first backtick),
/// shortened to the likeliest key when one is close; the list stays when none is.
fn unknown(rest: &str, what: &str, message: &str) -> String {
    let Some((word, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates = expected.split('`').skip(1).step_by(2);
    match closest(word, candidates) {
        Some(meant) if what == "field" => {
            format!("unknown key `{word}`; did you mean `{meant}`?")
        }
        Some(meant) => format!("{message}; did you mean `{meant}`?"),
        None => message.to_owned(),
    }
}

/// The candidate nearest to `word` by edit distance, if near enough to be a slip of the
/// fingers: one edit, or a quarter of the word for long ones (`colour` is not `cloud`).
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 4).max(1);
    candidates
        .map(|candidate| (distance(&word, &candidate.to_ascii_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance with adjacent transpositions counted as one edit (`scheduel`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Words longer than any key are not worth a quadratic table: they are no slip.
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut rows: Vec<Vec<usize>> = (0..=a.len())
        .map(|i| (0..=b.len()).map(|j| if i == 0 { j } else { i }).collect())
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_key_gets_the_likely_one_instead_of_the_list() {
        let message =
            "unknown field `scheduel`, expected one of `name`, `tenant_id`, `schedule`, `sinks`";
        assert_eq!(
            explain("scheduel", message),
            "unknown key `scheduel`; did you mean `schedule`?"
        );
        let message = "unknown field `client_idd`, expected one of `client_id`, `client_secret`";
        assert_eq!(
            explain("client_idd", message),
            "unknown key `client_idd`; did you mean `client_id`?"
        );
    }

    #[test]
    fn a_key_like_none_keeps_the_list() {
        let message = "unknown field `colour`, expected one of `name`, `tenant_id`, `schedule`";
        assert_eq!(explain("colour", message), message);
        let message = "unknown variant `failing`, expected one of `all`, `unhealthy`, `none`";
        assert_eq!(explain("per_tenant_metrics", message), message);
    }

    #[test]
    fn a_misspelt_value_keeps_the_list_and_gets_the_likely_one() {
        let message = "unknown variant `unhealty`, expected one of `all`, `unhealthy`, `none`";
        assert_eq!(
            explain("per_tenant_metrics", message),
            format!("{message}; did you mean `unhealthy`?")
        );
    }

    #[test]
    fn a_number_for_a_duration_is_told_the_form() {
        let hinted = explain(
            "shutdown_grace",
            "invalid type: integer `5`, expected a string",
        );
        assert!(hinted.contains("shutdown_grace = \"30s\""), "{hinted}");
        // Other string keys keep the parser's words.
        assert_eq!(
            explain("client_id", "invalid type: integer `5`, expected a string"),
            "invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn distance_counts_edits_and_transpositions() {
        assert_eq!(distance("schedule", "schedule"), 0);
        assert_eq!(distance("scheduel", "schedule"), 1);
        assert_eq!(distance("sink", "sinks"), 1);
        assert_eq!(distance("abc", "xyz"), 3);
        assert_eq!(closest("zzz", ["a", "b"].into_iter()), None);
        assert_eq!(closest("colour", ["cloud", "name"].into_iter()), None);
        assert_eq!(distance(&"a".repeat(100), "a"), usize::MAX);
    }
}
