//! Co-drive commands: whoami, writers, authorize, deauthorize, conflicts.

use anyhow::Result;
use co_hyperdrive::codrive::CoDrive;
use co_hyperdrive::format::{path, Key};
use co_hyperdrive::Store;

use crate::{Cli, Command};

pub(crate) async fn run(cli: &Cli) -> Result<()> {
    let store = Store::open(&cli.dir)?;
    // The store's co-drive: named by --drive, else the one whose primary is our own drive.
    let co = match &cli.drive {
        Some(k) => CoDrive::open(&store, k.parse::<Key>()?, "db").await?,
        None => CoDrive::create(&store, "db").await?,
    };
    let r = command(cli, &co).await;
    co.own().sync()?;
    r
}

async fn command(cli: &Cli, co: &CoDrive) -> Result<()> {
    match &cli.command {
        Command::Whoami => println!("{}", co.local_key()),
        Command::Writers { json } => {
            let v = co.view().await?;
            if *json {
                let w: Vec<_> = v
                    .writers
                    .keys()
                    .map(|k| serde_json::json!({ "key": k.to_hex(), "primary": *k == co.key(), "removed": false }))
                    .chain(v.removed.iter().map(|(k, l)| serde_json::json!({ "key": k.to_hex(), "primary": false, "removed": true, "counted_length": l })))
                    .collect();
                println!("{}", serde_json::Value::Array(w));
            } else {
                for k in v.writers.keys() {
                    println!("{k}{}", if *k == co.key() { " (primary)" } else { "" });
                }
                for (k, l) in &v.removed {
                    println!("{k} (removed; first {l} blocks count)");
                }
            }
        }
        Command::Authorize { key } => co.authorize(key.parse()?).await?,
        Command::Deauthorize { key } => co.deauthorize(key.parse()?).await?,
        Command::Conflicts { path: folder, json } => {
            let v = co.view().await?;
            let f = path::folder(folder.as_deref().unwrap_or("/"));
            for (p, r) in v.conflicts().filter(|(p, _)| path::is_under(p, &f)) {
                if *json {
                    let versions: Vec<_> = r
                        .conflicts
                        .iter()
                        .map(|c| serde_json::json!({ "writer": c.writer.to_hex(), "seq": c.seq, "deleted": c.entry.is_none(), "winner": c == &r.winner }))
                        .collect();
                    println!("{}", serde_json::json!({ "path": p, "versions": versions }));
                } else {
                    let who: Vec<String> = r
                        .conflicts
                        .iter()
                        .map(|c| {
                            format!(
                                "{}@{}{}",
                                &c.writer.to_hex()[..8],
                                c.seq,
                                if c.entry.is_none() { " (deleted)" } else { "" }
                            )
                        })
                        .collect();
                    println!("{p}: {}", who.join(", "));
                }
            }
            for p in v.clashes().iter().filter(|p| path::is_under(p, &f)) {
                println!("{p}: file/folder clash between writers");
            }
        }
        _ => unreachable!("dispatched by cmd::run"),
    }
    Ok(())
}
