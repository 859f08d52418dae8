//! Reading Markdown as GitHub and mdBook render it, for the tests that check the documentation
//! (`docs.rs`) and the runbook's anchors (`alerts.rs`): lines outside code blocks, headings and
//! their anchors, link targets.
#![allow(dead_code)]

/// A Markdown file's lines, each with its 1-based number, outside fenced code blocks.
pub fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"]
            .into_iter()
            .find(|marker| trimmed.starts_with(marker));
        match (fence, marker) {
            (None, Some(marker)) => fence = Some(marker),
            (Some(open), Some(marker)) if open == marker => fence = None,
            (None, None) => lines.push((index + 1, line)),
            _ => {}
        }
    }
    lines
}

/// `line` with every code span blanked out, so that neither a link nor a heading's words are
/// looked for inside one. A span opened by N backticks closes at the next run of exactly N.
pub fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let run_at = |at: usize| chars[at..].iter().take_while(|c| **c == '`').count();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while at < chars.len() {
        if chars[at] != '`' {
            out.push(chars[at]);
            at += 1;
            continue;
        }
        let open = run_at(at);
        let mut close = at + open;
        while close < chars.len() && !(chars[close] == '`' && run_at(close) == open) {
            close += if chars[close] == '`' {
                run_at(close)
            } else {
                1
            };
        }
        if close >= chars.len() {
            // No closing run: the backticks are literal text.
            out.extend(&chars[at..at + open]);
            at += open;
            continue;
        }
        out.push(' ');
        at = close + open;
    }
    out
}

/// The text of an ATX heading line (`## Text ##`), if it is one.
pub fn heading_text(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    let level = trimmed.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) || line.len() - trimmed.len() > 3 {
        return None;
    }
    let rest = &trimmed[level..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim().trim_end_matches('#').trim_end())
}

/// The anchor GitHub and mdBook give a heading: its words (link targets and Markdown
/// punctuation dropped) in lower case, letters, digits, `-` and `_` kept, spaces turned into
/// hyphens.
pub fn slug(heading: &str) -> String {
    let mut words = String::new();
    let mut rest = heading;
    // `[text](target)` shows as `text`.
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|at| open + at) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|at| close + at) else {
            break;
        };
        words.push_str(&rest[..open]);
        words.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    words.push_str(rest);
    words
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The link targets on one line (code spans left out): inline links and images
/// `[text](target "title")`, and reference definitions `[label]: target`.
pub fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let definition = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"));
    if let Some((_, target)) = definition {
        targets.extend(target.split_whitespace().next().map(str::to_owned));
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        // The target ends at the `)` that balances its own parentheses.
        let mut depth = 0usize;
        let end = rest
            .char_indices()
            .find(|(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(rest.len(), |(at, _)| at);
        let inside = rest[..end].trim();
        let target = match inside.strip_prefix('<') {
            Some(bracketed) => bracketed.split('>').next().unwrap_or_default(),
            None => inside.split_whitespace().next().unwrap_or_default(),
        };
        targets.push(target.to_owned());
        rest = &rest[end..];
    }
    targets
}
