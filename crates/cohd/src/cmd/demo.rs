//! `cohd demo`: the quick-start's main job, in a temporary store.

use anyhow::Result;
use co_hyperdrive::{Drive, Store};

pub(crate) async fn run() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cohd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = demo(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo(dir: &std::path::Path) -> Result<()> {
    println!("== creating a store at {}", dir.display());
    let store = Store::create(dir)?;
    let drive = Drive::open_own(&store, "db").await?;
    println!("drive key: {}", drive.key());
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
    println!("== ls -r /  (version {v})");
    for e in drive.list("/").await? {
        println!("  {} ({} bytes)", e.path, e.entry.size());
    }
    println!("== readdir /: {:?}", drive.readdir("/").await?);
    println!(
        "== cat /hello.txt: {}",
        String::from_utf8_lossy(&drive.get("/hello.txt").await?.unwrap_or_default())
    );
    println!(
        "== cat /latest (symlink): {}",
        String::from_utf8_lossy(&drive.get("/latest").await?.unwrap_or_default()).trim()
    );
    drive.del("/data/0.txt").await?;
    drive.put("/hello.txt", b"Hello again").await?;
    println!("== diff {v}..{}", drive.version());
    for c in drive.diff(v, drive.version(), "/").await? {
        let sign = match (&c.before, &c.after) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        };
        println!("  {sign} {}", c.path);
    }
    let old = drive.checkout(v)?;
    println!(
        "== checkout {v}: /hello.txt = {}",
        String::from_utf8_lossy(&old.get("/hello.txt").await?.unwrap_or_default())
    );
    drive.sync()?;
    println!(
        "== done: db core {} blocks, blobs core {} blocks",
        drive.db().core().info().length,
        drive.blobs().core().info().length
    );
    Ok(())
}
