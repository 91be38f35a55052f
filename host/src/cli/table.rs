//! How the client commands print the API's answers: aligned tables, `field  value` details,
//! sizes in units; `--json` prints the API's JSON unchanged.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use serde_json::{json, Value};

use super::progress;

/// One value as a person reads it: sizes in GiB (`size`) or in binary units (`*_bytes`,
/// `virtual_size`); `--json` keeps the numbers.
fn cell(field: &str, value: &Value) -> String {
    match value {
        Value::Number(n) if field == "size" || field.ends_with("_gigabytes") => format!("{n} GiB"),
        Value::Number(n) if field.ends_with("_bytes") || field == "virtual_size" => {
            n.as_u64().map_or_else(|| n.to_string(), progress::human)
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// One object as `field  value` lines, fields without a value left out (the JSON itself when
/// `json`).
pub(super) fn details(json: bool, value: &Value, fields: &[&str]) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = fields.iter().map(|f| f.len()).max().unwrap_or(0);
    for field in fields {
        if !value[*field].is_null() {
            println!("{field:<width$}  {}", cell(field, &value[*field]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints rows of `fields` from a JSON array as an aligned table.
fn table(items: &Value, fields: &[&str]) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|a| a.iter().map(|item| fields.iter().map(|f| cell(f, &item[*f])).collect()).collect())
        .unwrap_or_default();
    let widths: Vec<usize> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| rows.iter().map(|r| r[i].len()).chain([f.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(fields.iter().map(|f| f.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// A JSON array (or one object) as a table of `fields`, or the JSON itself when `json`.
pub(super) fn show(json: bool, value: &Value, fields: &[&str]) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else if value.is_array() {
        table(value, fields);
    } else if !value.is_null() {
        table(&json!([value]), fields);
    }
    Ok(ExitCode::SUCCESS)
}
