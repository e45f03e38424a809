//! File commands: info, put, cat, ls, rm, stat.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use co_hyperdrive::{Drive, DriveEntry, PutOptions};
use tokio::io::AsyncReadExt;

use crate::output;

pub(crate) async fn info(drive: &Drive, json: bool) -> Result<()> {
    let db = drive.db().core().info();
    let blobs = drive.blobs().core().info();
    if json {
        let v = serde_json::json!({
            "key": drive.key().to_hex(),
            "id": drive.key().to_z32(),
            "blobs_key": drive.blobs_key().to_hex(),
            "writable": drive.writable(),
            "version": drive.version(),
            "db": { "length": db.length, "byte_length": db.byte_length },
            "blobs": { "length": blobs.length, "byte_length": blobs.byte_length },
        });
        println!("{v}");
    } else {
        println!("key:       {}", drive.key());
        println!("id:        {}", drive.key().to_z32());
        println!("writable:  {}", drive.writable());
        println!("version:   {}", drive.version());
        println!(
            "db core:   {} blocks, {}",
            db.length,
            output::size(db.byte_length)
        );
        println!(
            "blobs core: {}, {} blocks, {}",
            drive.blobs_key(),
            blobs.length,
            output::size(blobs.byte_length)
        );
    }
    Ok(())
}

pub(crate) async fn put(
    drive: &Drive,
    path: &str,
    local: Option<&Path>,
    executable: bool,
    metadata: Option<&str>,
) -> Result<()> {
    let metadata = metadata
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(m).context("--metadata is not valid JSON")
        })
        .transpose()?;
    let opts = PutOptions {
        executable,
        metadata,
    };
    let mut w = drive.writer(path, opts).await?;
    let mut buf = vec![0u8; 1 << 20];
    match local {
        Some(p) if p != Path::new("-") => {
            let mut f = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("cannot read {}", p.display()))?;
            loop {
                let n = f
                    .read(&mut buf)
                    .await
                    .with_context(|| format!("reading {}", p.display()))?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).await?;
            }
        }
        _ => {
            let mut stdin = tokio::io::stdin();
            loop {
                let n = stdin.read(&mut buf).await.context("reading stdin")?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).await?;
            }
        }
    }
    w.finish().await?;
    Ok(())
}

pub(crate) async fn cat(drive: &Drive, path: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = None;
    drive
        .read_range(path, 0, u64::MAX, |chunk| {
            if let Err(e) = out.write_all(chunk) {
                err = Some(e);
            }
            Ok(())
        })
        .await?;
    if let Some(e) = err {
        return Err(e.into());
    }
    out.flush()?;
    Ok(())
}

fn entry_json(e: &DriveEntry) -> serde_json::Value {
    serde_json::json!({
        "path": e.path,
        "seq": e.seq,
        "size": e.entry.size(),
        "executable": e.entry.executable,
        "linkname": e.entry.linkname,
        "blob": e.entry.blob,
        "metadata": e.entry.metadata,
    })
}

fn long_line(e: &DriveEntry) -> String {
    let kind = if e.entry.linkname.is_some() && e.entry.blob.is_none() {
        'l'
    } else {
        '-'
    };
    let x = if e.entry.executable { 'x' } else { '-' };
    let link = e
        .entry
        .linkname
        .as_ref()
        .map(|l| format!(" -> {l}"))
        .unwrap_or_default();
    format!("{kind}{x} {:>12} {}{link}", e.entry.size(), e.path)
}

pub(crate) async fn ls(
    drive: &Drive,
    folder: &str,
    recursive: bool,
    long: bool,
    json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if recursive || long || json {
        let entries = if recursive {
            drive.list(folder).await?
        } else {
            drive.list_shallow(folder).await?
        };
        if json {
            let v: Vec<_> = entries.iter().map(entry_json).collect();
            writeln!(out, "{}", serde_json::Value::Array(v))?;
        } else {
            for e in &entries {
                if long {
                    writeln!(out, "{}", long_line(e))?;
                } else {
                    writeln!(out, "{}", e.path)?;
                }
            }
        }
        if !recursive && !json {
            // Subfolders, which list_shallow leaves out, shown as `path/`.
            for name in drive.readdir(folder).await? {
                let p = join(folder, &name);
                if !entries.iter().any(|e| e.path == p) {
                    writeln!(
                        out,
                        "{}{p}/",
                        if long {
                            format!("d- {:>12} ", "-")
                        } else {
                            String::new()
                        }
                    )?;
                }
            }
        }
    } else {
        for name in drive.readdir(folder).await? {
            writeln!(out, "{}", join(folder, &name))?;
        }
    }
    Ok(())
}

fn join(folder: &str, name: &str) -> String {
    let f = co_hyperdrive::format::path::folder(folder);
    format!("{f}/{name}")
}

pub(crate) async fn rm(drive: &Drive, path: &str, recursive: bool) -> Result<()> {
    if recursive {
        let entries = drive.list(path).await?;
        let exact = drive.entry(path).await.ok().flatten();
        if entries.is_empty() && exact.is_none() {
            bail!("no such file or folder: {path}");
        }
        let mut b = drive.batch().await?;
        for e in exact.iter().chain(entries.iter()) {
            b.del(&e.path).await?;
        }
        b.flush().await?;
        return Ok(());
    }
    if !drive.del(path).await? {
        if !drive.list(path).await?.is_empty() {
            bail!("{path} is a folder (use rm -r)");
        }
        bail!("no such file: {path}");
    }
    Ok(())
}

pub(crate) async fn stat(drive: &Drive, path: &str, json: bool) -> Result<()> {
    let Some(e) = drive.entry(path).await? else {
        if !drive.list(path).await?.is_empty() {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "path": co_hyperdrive::format::path::resolve(path), "directory": true })
                );
            } else {
                println!("{}: directory", co_hyperdrive::format::path::resolve(path));
            }
            return Ok(());
        }
        bail!("no such file: {path}");
    };
    if json {
        println!("{}", entry_json(&e));
    } else {
        println!("path:       {}", e.path);
        println!(
            "type:       {}",
            if e.entry.blob.is_none() {
                "symlink"
            } else {
                "file"
            }
        );
        println!("size:       {}", e.entry.size());
        println!("executable: {}", e.entry.executable);
        if let Some(l) = &e.entry.linkname {
            println!("linkname:   {l}");
        }
        if let Some(b) = &e.entry.blob {
            println!(
                "blob:       blocks {}+{}, bytes {}+{}",
                b.block_offset, b.block_length, b.byte_offset, b.byte_length
            );
        }
        if let Some(m) = &e.entry.metadata {
            println!("metadata:   {m}");
        }
        println!("seq:        {}", e.seq);
    }
    Ok(())
}
