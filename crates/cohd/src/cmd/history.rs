//! log and diff: the history of this store's own drive (the local writer's log), not the
//! merged co-drive.

use std::io::Write;

use anyhow::{bail, Result};
use co_hyperdrive::format::{sub, Entry};
use co_hyperdrive::records;
use co_hyperdrive::Drive;

use crate::output::Out;

/// One line per file write. A co-drive write is a file entry followed, in the same batch, by its
/// version record: the line shows the version the write's batch made (after the record; for
/// the files of one import, the version after its last). A delete of a path this drive never
/// held is a version record alone (a tombstone).
pub(crate) async fn log(drive: &Drive, out: &mut Out, json: bool) -> Result<()> {
    let len = drive.version();
    let mut next = if len > 1 {
        Some(drive.db().block_at(1).await?)
    } else {
        None
    };
    let mut prev_file: Option<String> = None;
    // The blocks of the batch the last op was in (its last block .. its end), so that a
    // batch is looked up once.
    let mut batch: Option<std::ops::Range<u64>> = None;
    for seq in 1..len {
        // A long history reaches a forwarding client as it goes.
        out.pace().await?;
        let Some((key, value)) = next.take() else {
            break;
        };
        if seq + 1 < len {
            next = Some(drive.db().block_at(seq + 1).await?);
        }
        // `seq` as `stat` and `conflicts` show a version: the log's length right after the
        // file's entry (for a tombstone, before its record).
        let (path, op, size, version, time, vseq) = if let Some(p) = sub::decode(sub::FILES, &key) {
            let path = String::from_utf8_lossy(p).into_owned();
            let record = records::version_key(&path);
            let (version, time) = match &next {
                Some((k, v)) if *k == record => (
                    seq + 2,
                    v.as_deref()
                        .and_then(|v| records::decode_version(v).ok())
                        .and_then(|r| r.2),
                ),
                _ => (seq + 1, None),
            };
            let (op, size) = match &value {
                None => ("del", 0),
                Some(v) => match Entry::decode(v) {
                    Ok(e) if e.blob.is_none() => ("symlink", 0),
                    Ok(e) => ("put", e.size()),
                    Err(_) => ("bad-entry", 0),
                },
            };
            prev_file = Some(path.clone());
            (path, op, size, version, time, seq + 1)
        } else {
            let prev = prev_file.take();
            let Some(path) =
                records::version_path(&key).map(|p| String::from_utf8_lossy(p).into_owned())
            else {
                continue;
            };
            // A record right after its file's entry was shown with that entry.
            if prev.as_deref() == Some(path.as_str()) {
                continue;
            }
            match value.as_deref().map(records::decode_version) {
                Some(Ok((_, true, time))) => (path, "del", 0, seq + 1, time, seq),
                _ => continue,
            }
        };
        // The version the op became visible at: its batch's end (an import's files all
        // appear at once; a version inside the batch is none of this drive's).
        let version = match &batch {
            Some(b) if b.contains(&(version - 1)) => b.end,
            _ => {
                let end = drive.db().committed_at(version - 1)?;
                batch = Some(version - 1..end);
                end
            }
        };
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "version": version, "seq": vseq, "op": op, "path": path, "size": size, "time": time })
            )?;
        } else {
            writeln!(
                out,
                "{:>6} {:<20} {:<8} {}{}",
                version,
                time.map(crate::output::utc)
                    .unwrap_or_else(|| "-".to_string()),
                op,
                path,
                if op == "put" {
                    format!(" ({size} B)")
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(())
}

pub(crate) async fn diff(
    drive: &Drive,
    out: &mut Out,
    from: u64,
    to: Option<u64>,
    folder: &str,
    json: bool,
) -> Result<()> {
    let now = drive.version();
    let to = to.unwrap_or(now);
    for v in [from, to] {
        if v > now {
            bail!(
                "version {v} of this store's drive does not exist: it is at version {now} \
                 (`cohd log` shows the version each write made)"
            );
        }
    }
    let changes = drive.diff(from, to, folder).await?;
    if changes.is_empty() && !co_hyperdrive::format::path::folder(folder).is_empty() {
        // Nothing changed, or nothing is there: the second is a mistake worth saying.
        let mut there = false;
        for v in [from, to] {
            let d = drive.checkout(v)?;
            there |= d.entry(folder).await?.is_some() || !d.list(folder).await?.is_empty();
        }
        if !there {
            bail!("no file or folder {folder} at version {from} or {to}");
        }
    }
    for c in changes {
        let kind = match (&c.before, &c.after) {
            (None, _) => "added",
            (_, None) => "deleted",
            _ => "modified",
        };
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "path": c.path, "change": kind })
            )?;
        } else {
            let sign = match kind {
                "added" => '+',
                "deleted" => '-',
                _ => '~',
            };
            writeln!(out, "{sign} {}", c.path)?;
        }
    }
    Ok(())
}
