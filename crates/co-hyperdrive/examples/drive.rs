//! One writer's drive (a Hyperdrive 13 drive): writes, a batch, a symlink, listing, a diff
//! between two versions and a checkout of the older one, in a memory store.
//!
//! ```text
//! cargo run -p co-hyperdrive --example drive
//! ```

use co_hyperdrive::{Drive, DriveError, Store};

#[tokio::main]
async fn main() -> Result<(), DriveError> {
    let store = Store::memory();
    let drive = Drive::open_own(&store, "db").await?;
    println!("drive key: {}", drive.key());
    drive.put("/hello.txt", b"Hello world").await?;
    // One atomic append for several files.
    let mut batch = drive.batch().await?;
    for i in 0..3 {
        let name = format!("/data/{i}.txt");
        batch.put(&name, format!("file {i}\n").as_bytes()).await?;
    }
    batch.flush().await?;
    drive.symlink("/latest", "/data/2.txt").await?;
    let v = drive.version();
    for e in drive.list("/").await? {
        println!("{} ({} bytes)", e.path, e.entry.size());
    }
    let latest = drive.get("/latest").await?.unwrap_or_default();
    println!("/latest -> {:?}", String::from_utf8_lossy(&latest).trim());

    drive.del("/data/0.txt").await?;
    drive.put("/hello.txt", b"Hello again").await?;
    for c in drive.diff(v, drive.version(), "/").await? {
        let sign = match (&c.before, &c.after) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        };
        println!("{sign} {}", c.path);
    }
    // A version never changes: the checkout reads what was there.
    let old = drive
        .checkout(v)?
        .get("/hello.txt")
        .await?
        .unwrap_or_default();
    println!(
        "at version {v}: /hello.txt = {:?}",
        String::from_utf8_lossy(&old)
    );
    Ok(())
}
