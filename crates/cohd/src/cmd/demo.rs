//! `cohd demo`: the quick-start's main job, in a temporary store.

use std::io::Write;

use anyhow::Result;
use co_hyperdrive::{Drive, Store};

use crate::output::Out;

pub(crate) async fn run(out: &mut Out) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cohd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = demo(&dir, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo(dir: &std::path::Path, out: &mut Out) -> Result<()> {
    writeln!(out, "== creating a store at {}", dir.display())?;
    let store = Store::create(dir)?;
    let drive = Drive::open_own(&store, "db").await?;
    writeln!(out, "drive key: {}", drive.key())?;
    drive.put("/hello.txt", b"Hello world").await?;
    drive.put("/docs/readme.md", b"# co-hyperdrive\n").await?;
    let mut batch = drive.batch().await?;
    for i in 0..3 {
        batch
            .put(&format!("/data/{i}.txt"), format!("file {i}\n").as_bytes())
            .await?;
    }
    batch.flush().await?;
    drive.symlink("/latest", "/data/2.txt").await?;
    let v = drive.version();
    writeln!(out, "== ls -r /  (version {v})")?;
    for e in drive.list("/").await? {
        writeln!(out, "  {} ({} bytes)", e.path, e.entry.size())?;
    }
    writeln!(out, "== readdir /: {:?}", drive.readdir("/").await?)?;
    writeln!(
        out,
        "== cat /hello.txt: {}",
        String::from_utf8_lossy(&drive.get("/hello.txt").await?.unwrap_or_default())
    )?;
    writeln!(
        out,
        "== cat /latest (symlink): {}",
        String::from_utf8_lossy(&drive.get("/latest").await?.unwrap_or_default()).trim()
    )?;
    drive.del("/data/0.txt").await?;
    drive.put("/hello.txt", b"Hello again").await?;
    writeln!(out, "== diff {v}..{}", drive.version())?;
    for c in drive.diff(v, drive.version(), "/").await? {
        let sign = match (&c.before, &c.after) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        };
        writeln!(out, "  {sign} {}", c.path)?;
    }
    let old = drive.checkout(v)?;
    writeln!(
        out,
        "== checkout {v}: /hello.txt = {}",
        String::from_utf8_lossy(&old.get("/hello.txt").await?.unwrap_or_default())
    )?;
    drive.sync()?;
    writeln!(
        out,
        "== done: db core {} blocks, blobs core {} blocks",
        drive.db().core().info().length,
        drive.blobs().core().info().length
    )?;
    Ok(())
}
