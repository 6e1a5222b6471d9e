//! Writing what a command found to stdout: text, JSON, tables or templates, and inspect's
//! array of documents.

use std::io::Write as _;

use tonic::{Code, Status};

use crate::failure::{Failure, Result};
use crate::output::{self, Row};

pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`weft network ls | head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
}

pub(crate) fn print_json(value: &serde_json::Value) {
    print(&format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()));
}

pub(crate) fn rows_or_format(kind: &str, format: &str, columns: &[&str], rows: &[Row]) -> Result<()> {
    print(&output::format_rows(kind, format, columns, rows).map_err(Failure::new)?);
    Ok(())
}

/// Looks each reference up and prints what was found as one JSON array; as with Docker, each
/// one not found makes the command fail after the rest are printed.
pub(crate) async fn inspect_each<F, Fut>(references: Vec<String>, inspect: F) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Option<serde_json::Value>, Status>>,
{
    let mut documents = Vec::new();
    let mut missing = Vec::new();
    for reference in references {
        match inspect(reference).await {
            Ok(found) => documents.extend(found),
            Err(status) if status.code() == Code::NotFound => missing.push(status),
            Err(status) => return Err(status.into()),
        }
    }
    print_json(&serde_json::Value::Array(documents));
    if missing.is_empty() { Ok(()) } else { Err(Failure::missing(&missing)) }
}
