//! Rules that span tenants: unique names, and no two sinks writing one file.

use std::collections::HashMap;
use std::path::Path;

use super::Problem;
use super::loader::{Loader, visible};

impl Loader<'_> {
    /// Rules that span tenants: unique names, no two sinks writing one file.
    pub(super) fn cross_tenant_rules(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let mut names: HashMap<&str, Option<usize>> = HashMap::new();
        let mut paths: HashMap<&Path, &str> = HashMap::new();
        for (name, line, sink_paths) in &seen {
            if let Some(first_line) = names.get(name.as_str()) {
                let first = first_line
                    .map(|l| format!(" (first defined on line {l})"))
                    .unwrap_or_default();
                self.problems.push(Problem {
                    line: *line,
                    key: Some(format!("tenant {name:?}: name")),
                    message: format!("duplicate tenant name {name:?}{first}; names must be unique"),
                });
                continue;
            }
            names.insert(name, *line);
            for path in sink_paths {
                if let Some(other) = paths.insert(path, name) {
                    let message = if other == name {
                        format!("two sinks write the same file {}", path.display())
                    } else {
                        format!(
                            "writes {} which tenant {other:?} also writes; put {{name}} in the path",
                            path.display()
                        )
                    };
                    self.problems.push(Problem {
                        line: *line,
                        key: Some(format!("tenant {name:?}: sinks.path")),
                        message: visible(&message),
                    });
                }
            }
        }
    }
}
