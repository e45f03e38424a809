//! log and diff.

use anyhow::Result;
use co_hyperdrive::format::{sub, Entry};
use co_hyperdrive::Drive;

pub(crate) async fn log(drive: &Drive, json: bool) -> Result<()> {
    let len = drive.version();
    for seq in 1..len {
        let (key, value) = drive.db().block_at(seq).await?;
        let Some(path) = sub::decode(sub::FILES, &key) else {
            continue;
        };
        let path = String::from_utf8_lossy(path);
        let (op, size) = match &value {
            None => ("del", 0),
            Some(v) => match Entry::decode(v) {
                Ok(e) if e.blob.is_none() => ("symlink", 0),
                Ok(e) => ("put", e.size()),
                Err(_) => ("bad-entry", 0),
            },
        };
        if json {
            println!(
                "{}",
                serde_json::json!({ "version": seq + 1, "seq": seq, "op": op, "path": path, "size": size })
            );
        } else {
            println!(
                "{:>6} {:<8} {}{}",
                seq + 1,
                op,
                path,
                if op == "put" {
                    format!(" ({size} B)")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

pub(crate) async fn diff(
    drive: &Drive,
    from: u64,
    to: Option<u64>,
    folder: &str,
    json: bool,
) -> Result<()> {
    let to = to.unwrap_or(drive.version());
    for c in drive.diff(from, to, folder).await? {
        let kind = match (&c.before, &c.after) {
            (None, _) => "added",
            (_, None) => "deleted",
            _ => "modified",
        };
        if json {
            println!("{}", serde_json::json!({ "path": c.path, "change": kind }));
        } else {
            let sign = match kind {
                "added" => '+',
                "deleted" => '-',
                _ => '~',
            };
            println!("{sign} {}", c.path);
        }
    }
    Ok(())
}
