//! Co-drive commands: whoami, writers, authorize, deauthorize, conflicts.

use std::io::Write;

use anyhow::{bail, Result};
use co_hyperdrive::format::{path, Key};
use co_hyperdrive::view::Resolved;
use co_hyperdrive::CoDrive;

use super::files::read_indexed;
use super::files::{versions_json, versions_text};
use crate::output::Out;
use crate::Command;

pub(crate) async fn run(command: &Command, co: &CoDrive, out: &mut Out) -> Result<()> {
    match command {
        Command::Whoami => writeln!(out, "{}", co.local_key())?,
        Command::Writers { json } => {
            let idx = co.indexed().await?;
            let held = |k: &Key| !idx.missing().contains(k);
            if *json {
                let one = |k: &Key, counted: Option<u64>| {
                    let mut j = serde_json::json!({
                        "key": k.to_hex(),
                        "primary": *k == co.key(),
                        "removed": counted.is_some(),
                        "held": held(k),
                    });
                    if let Some(l) = counted {
                        j["counted_length"] = l.into();
                    }
                    j
                };
                let w: Vec<_> = idx
                    .writers()
                    .keys()
                    .map(|k| one(k, None))
                    .chain(idx.removed().iter().map(|(k, l)| one(k, Some(*l))))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(w))?;
            } else {
                let note = |k: &Key| {
                    if held(k) {
                        ""
                    } else {
                        " (not in this store yet)"
                    }
                };
                for k in idx.writers().keys() {
                    let primary = if *k == co.key() { " (primary)" } else { "" };
                    writeln!(out, "{k}{primary}{}", note(k))?;
                }
                for (k, l) in idx.removed() {
                    writeln!(out, "{k} (removed; first {l} blocks count){}", note(k))?;
                }
            }
        }
        Command::Authorize { key } => {
            let k: Key = key.parse()?;
            if let Ok(idx) = read_indexed(co).await {
                if idx.writers().contains_key(&k) {
                    writeln!(
                        out,
                        "{k} is already a writer of {}: nothing changed",
                        co.key()
                    )?;
                    return Ok(());
                }
            }
            co.authorize(k).await?;
            writeln!(
                out,
                "authorized {k}: it can write to {} once this record reaches it (a sync, or a \
                 connected serve)",
                co.key()
            )?;
        }
        Command::Deauthorize { key } => {
            let k: Key = key.parse()?;
            if let Ok(idx) = read_indexed(co).await {
                if !idx.writers().contains_key(&k) {
                    if idx.removed().contains_key(&k) {
                        writeln!(out, "{k} was already removed: nothing changed")?;
                        return Ok(());
                    }
                    bail!(
                        "{k} is not a writer of {} (`cohd writers` lists them)",
                        co.key()
                    );
                }
            }
            co.deauthorize(k).await?;
            writeln!(out, "removed writer {k}: the writes of it seen so far stay")?;
        }
        Command::Conflicts { path: folder, json } => {
            let idx = read_indexed(co).await?;
            let f = path::folder(folder.as_deref().unwrap_or("/"));
            // Streamed from the index; clashes (a visible file that is also a folder of visible
            // files) come after, as files sort right before their folder's contents.
            let mut clashes = Vec::new();
            let mut listed = false;
            let mut last_file: Option<String> = None;
            let under = if f.is_empty() { "/" } else { f.as_str() };
            let mut each = |p: &str, r: Resolved| -> Result<()> {
                if r.conflicts.len() > 1 {
                    listed = true;
                    if *json {
                        let versions = versions_json(&r.conflicts, (r.winner.writer, r.winner.seq));
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({ "path": p, "versions": versions })
                        )?;
                    } else {
                        let winner = (r.winner.writer, r.winner.seq);
                        writeln!(
                            out,
                            "{p}: {} versions: {}",
                            r.conflicts.len(),
                            versions_text(&r.conflicts, Some(winner))
                        )?;
                    }
                }
                if r.winner.entry.is_some() {
                    if let Some(prev) = last_file.take() {
                        if p.len() > prev.len()
                            && p.starts_with(prev.as_str())
                            && p.as_bytes()[prev.len()] == b'/'
                        {
                            clashes.push(prev);
                        }
                    }
                    last_file = Some(p.to_string());
                }
                Ok(())
            };
            // The folder's own path first (a file there sorts right before its contents).
            if !f.is_empty() {
                if let Some(r) = idx.resolved(&f)? {
                    each(&f, r)?;
                }
            }
            idx.for_each_resolved(under, &mut each)?;
            if listed && !*json {
                out.note(
                    "read a version with `cohd cat PATH --writer WRITER8`; `cohd export` writes \
                     every version (NAME.conflict-WRITER8.EXT); writing PATH again settles it",
                );
            }
            for p in clashes {
                writeln!(out, "{p}: file/folder clash between writers")?;
            }
        }
        _ => unreachable!("dispatched by cmd::run"),
    }
    Ok(())
}
