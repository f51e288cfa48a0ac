//! Terminal helpers: aligned tables, the yes/no prompt, progress bars that only draw on a
//! terminal (hidden when stderr is a pipe or a file, so scripts get clean output).

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// Columns padded to their widest cell, two spaces apart, each line indented by two.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Asks `question` on stderr and reads the answer from stdin; only `y`/`yes` is a yes, and
/// ctrl-c (`stop`) is a no. `None` when stdin is not a terminal (nobody to ask).
pub async fn confirm(question: &str, stop: &CancellationToken) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    // A plain thread, not `spawn_blocking`: a read left blocked by ctrl-c must not keep the
    // runtime (and so the process) from ending.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer);
        let _ = tx.send(read.map(|_| answer));
    });
    tokio::select! {
        _ = stop.cancelled() => Some(false),
        answer = rx => {
            let answer = answer.ok()?.ok()?;
            Some(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
        }
    }
}

/// Whether [`progress`] draws a bar: only on a terminal (stderr).
pub fn progress_shown() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar of `len` steps on stderr, hidden unless stderr is a terminal.
pub fn progress(len: u64, message: &'static str) -> ProgressBar {
    if !progress_shown() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(message);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} {per_sec} · {elapsed_precise} elapsed · eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn tables_align_every_column() {
        let rows = vec![
            vec!["exhausted".to_string(), "12".to_string()],
            vec!["invalid_json".to_string(), "3".to_string()],
        ];
        assert_eq!(
            table(&["REASON", "RECORDS"], &rows),
            "  REASON        RECORDS\n  exhausted     12\n  invalid_json  3\n"
        );
    }
}
