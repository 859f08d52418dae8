//! Rules that span tenants: unique names, and no two sinks writing one file or Redis key.

use std::collections::HashMap;

use super::Problem;
use super::loader::{Loader, visible};
use super::types::Destination;

impl Loader<'_> {
    /// Rules that span tenants: unique names, no two sinks writing one file or key, and Redis
    /// sinks only with a `[redis]` section.
    pub(super) fn cross_tenant_rules(&mut self, has_redis: bool) {
        let seen = std::mem::take(&mut self.seen);
        // Sized up front: growing them tenant by tenant rehashes every entry again and again.
        let mut names: HashMap<&str, Option<usize>> = HashMap::with_capacity(seen.len());
        let mut destinations: HashMap<&Destination, &str> = HashMap::with_capacity(seen.len());
        for (name, line, sink_destinations) in &seen {
            if let Some(first_line) = names.get(name.as_str()) {
                let first = first_line
                    .map(|l| format!(" (first defined on line {l})"))
                    .unwrap_or_default();
                self.problems.push(Problem {
                    column: None,
                    line: *line,
                    key: Some(format!("tenant {name:?}: name")),
                    message: format!("duplicate tenant name {name:?}{first}; names must be unique"),
                });
                continue;
            }
            names.insert(name, *line);
            for destination in sink_destinations {
                let key = match destination {
                    Destination::File(_) => "sinks.path",
                    Destination::RedisKey(_) => "sinks.key",
                };
                if !has_redis && matches!(destination, Destination::RedisKey(_)) {
                    self.problems.push(Problem {
                        column: None,
                        line: *line,
                        key: Some(format!("tenant {name:?}: sinks")),
                        message: "a redis sink needs a [redis] section with the server's url"
                            .to_owned(),
                    });
                }
                if let Some(other) = destinations.insert(destination, name) {
                    let message = if other == name {
                        format!("two sinks write {destination}")
                    } else {
                        format!(
                            "writes {destination} which tenant {other:?} also writes; put {{name}} in it"
                        )
                    };
                    self.problems.push(Problem {
                        column: None,
                        line: *line,
                        key: Some(format!("tenant {name:?}: {key}")),
                        message: visible(&message),
                    });
                }
            }
        }
    }
}
