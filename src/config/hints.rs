//! Hints added to the parser's messages: the key a misspelt one was probably meant to be. (A
//! number where a duration goes is answered by the duration's own type, `raw::RawDuration`.)
//!
//! serde names an unknown key with the whole list of the section's keys (25 for a tenant); a
//! user who typed `scheduel` wants to read `did you mean `schedule`?`, not to scan the list.

/// `message`, the parser's complaint, with a close match for an unknown key or value.
pub(super) fn explain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown(rest, "field", message);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown(rest, "variant", message);
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
            explain(message),
            "unknown key `scheduel`; did you mean `schedule`?"
        );
        let message = "unknown field `client_idd`, expected one of `client_id`, `client_secret`";
        assert_eq!(
            explain(message),
            "unknown key `client_idd`; did you mean `client_id`?"
        );
    }

    #[test]
    fn a_key_like_none_keeps_the_list() {
        let message = "unknown field `colour`, expected one of `name`, `tenant_id`, `schedule`";
        assert_eq!(explain(message), message);
        let message = "unknown variant `failing`, expected one of `all`, `unhealthy`, `none`";
        assert_eq!(explain(message), message);
    }

    #[test]
    fn a_misspelt_value_keeps_the_list_and_gets_the_likely_one() {
        let message = "unknown variant `unhealty`, expected one of `all`, `unhealthy`, `none`";
        assert_eq!(
            explain(message),
            format!("{message}; did you mean `unhealthy`?")
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
