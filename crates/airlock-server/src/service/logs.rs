//! Each sandbox's set-up log (start command, ready check, create-time
//! set-up), kept in the data directory.

use super::*;

impl Service {
    pub(super) fn log_path(&self, id: &str) -> std::path::PathBuf {
        self.cfg.data_dir.join("logs").join(format!("{id}.log"))
    }

    pub(super) fn remove_log(&self, id: &str) {
        let _ = std::fs::remove_file(self.log_path(id));
    }

    /// Appends lines to a sandbox's set-up log (timestamped).
    pub(super) fn append_log(&self, id: &str, text: &str) {
        use std::io::Write;
        let p = self.log_path(id);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&p) {
            let ts = rfc3339_ms(now_ms());
            for l in text.lines() {
                let _ = writeln!(f, "{ts}\t{l}");
            }
        }
    }

    /// The set-up log: start command, ready check, package installs, startup script.
    pub async fn logs(&self, id: &str) -> Result<api::SandboxLogs, ApiError> {
        self.row(id).await?;
        let p = self.log_path(id);
        let text = self.blocking(move || std::fs::read_to_string(p).unwrap_or_default()).await?;
        Ok(api::SandboxLogs {
            logs: text
                .lines()
                .map(|l| {
                    let (ts, line) = l.split_once('\t').unwrap_or(("", l));
                    api::LogLine { timestamp: ts.to_string(), line: line.to_string() }
                })
                .collect(),
        })
    }
}
