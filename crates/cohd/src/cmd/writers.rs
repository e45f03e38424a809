//! Co-drive commands: whoami, writers, authorize, deauthorize, conflicts.

use std::io::Write;

use anyhow::Result;
use co_hyperdrive::format::{path, Key};
use co_hyperdrive::CoDrive;

use super::files::{versions_json, versions_text};
use super::read_snapshot;
use crate::output::Out;
use crate::Command;

pub(crate) async fn run(command: &Command, co: &CoDrive, out: &mut Out) -> Result<()> {
    match command {
        Command::Whoami => writeln!(out, "{}", co.local_key())?,
        Command::Writers { json } => {
            let snap = co.snapshot().await?;
            let v = snap.view();
            let held = |k: &Key| !snap.missing().contains(k);
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
                let w: Vec<_> = v
                    .writers
                    .keys()
                    .map(|k| one(k, None))
                    .chain(v.removed.iter().map(|(k, l)| one(k, Some(*l))))
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
                for k in v.writers.keys() {
                    let primary = if *k == co.key() { " (primary)" } else { "" };
                    writeln!(out, "{k}{primary}{}", note(k))?;
                }
                for (k, l) in &v.removed {
                    writeln!(out, "{k} (removed; first {l} blocks count){}", note(k))?;
                }
            }
        }
        Command::Authorize { key } => {
            let k: Key = key.parse()?;
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
            co.deauthorize(k).await?;
            writeln!(out, "removed writer {k}: the writes of it seen so far stay")?;
        }
        Command::Conflicts { path: folder, json } => {
            let snap = read_snapshot(co).await?;
            let v = snap.view();
            let f = path::folder(folder.as_deref().unwrap_or("/"));
            let mut listed = false;
            for (p, r) in v.conflicts().filter(|(p, _)| path::is_under(p, &f)) {
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
            if listed && !*json {
                out.note(
                    "read a version with `cohd cat PATH --writer WRITER8`; `cohd export` writes \
                     every version (NAME.conflict-WRITER8.EXT); writing PATH again settles it",
                );
            }
            for p in v.clashes().iter().filter(|p| path::is_under(p, &f)) {
                writeln!(out, "{p}: file/folder clash between writers")?;
            }
        }
        _ => unreachable!("dispatched by cmd::run"),
    }
    Ok(())
}
