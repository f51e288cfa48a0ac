//! What a fault test measured, printed as one line.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

/// Events per load test: `FAULT_EVENTS`, else 2000.
pub fn fault_events() -> usize {
    match std::env::var("FAULT_EVENTS") {
        Err(_) => 2000,
        Ok(raw) => raw
            .parse()
            .ok()
            .filter(|&n: &usize| n >= 24)
            .unwrap_or_else(|| {
                panic!("FAULT_EVENTS={raw:?}: expected a number of events, 24 or more")
            }),
    }
}

/// What a fault test measured; printed as one line.
pub struct Report {
    pub fault: &'static str,
    pub sent: usize,
    /// Distinct event ids that arrived.
    pub delivered: usize,
    pub lost: usize,
    /// Arrivals beyond the first of each id.
    pub duplicates: usize,
    /// From the end of the fault (restart launched, connection restored, store unlocked) until
    /// the service works again (see each test).
    pub recover: Duration,
    /// From the end of the fault until every event was handled.
    pub drain: Duration,
    /// Figures of one test's own, printed after the others as `name=value`.
    pub extra: Vec<(&'static str, String)>,
}

impl Report {
    /// Counts `counts` (arrivals per id) against the `ids` that were sent. Panics on an id that
    /// was never sent.
    pub fn new(
        fault: &'static str,
        ids: &[String],
        counts: &HashMap<String, u32>,
        recover: Duration,
        drain: Duration,
    ) -> Report {
        let sent: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let strangers: Vec<&String> = counts
            .keys()
            .filter(|id| !sent.contains(id.as_str()))
            .collect();
        assert!(
            strangers.is_empty(),
            "ids that were never sent arrived: {strangers:?}"
        );
        let delivered = counts.len();
        let duplicates = counts.values().map(|&n| n as usize - 1).sum();
        Report {
            fault,
            sent: ids.len(),
            delivered,
            lost: ids.len() - delivered,
            duplicates,
            recover,
            drain,
            extra: Vec::new(),
        }
    }

    /// Adds a figure of the test's own to the line.
    pub fn with(mut self, name: &'static str, value: impl fmt::Display) -> Report {
        self.extra.push((name, value.to_string()));
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault={} sent={} delivered={} lost={} duplicates={} recover_ms={} drain_ms={}",
            self.fault,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicates,
            self.recover.as_millis(),
            self.drain.as_millis()
        )?;
        for (name, value) in &self.extra {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Whether the process was killed by `signal`.
pub fn killed_by(status: ExitStatus, signal: libc::c_int) -> bool {
    status.signal() == Some(signal)
}
