//! Stores made before the database: one folder of the `hypercore` crate's files per core
//! (`DIR/cores/<hex key>/`: `oplog`, `tree`, `data`, `bitfield`, `present`, `signed`). On first
//! open every core is read with our own decoders (`recover.rs` folds the oplog first, whatever
//! moment the last process stopped at) and checked: the roots against the owner's signature,
//! every other tree node against its verified parent, every block against its verified leaf.
//! What checks out is written into a new database beside the store (`db.moving`), made
//! durable, and only then renamed to `db`; the old folders go last. A stop at any point leaves
//! either the old layout (moved again next time) or the database (the old folders are then
//! removed); a failure leaves the store as it was.
//!
//! What does not check out is not carried over: a block or node that does not verify stays
//! behind (a peer delivers it again). A core whose signed tree does not verify stops the move
//! with an error naming it when it is one of ours (its log can only come from us); a replicated
//! core is left behind with a warning (peers have it).

mod recover;

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use cohd_format::merkle::{self, Node};
use cohd_format::Key;

use super::kv::Kv;
use super::ledger::Ledger;
use super::log::{Import, Log};
use super::StoreError;

/// The folder of the crate's cores in a store.
pub(crate) const CORES: &str = "cores";

/// Moves every core under `store/cores` into the database at `db`. The ledger names our own
/// cores and the lengths they reached (without one, every core counts as ours).
pub(crate) fn migrate(store: &Path, db: &Path, ledger: Option<&Ledger>) -> Result<(), StoreError> {
    let cores = store.join(CORES);
    let io = |what: String| {
        move |source| StoreError::Io {
            context: what,
            source,
        }
    };
    if db.is_dir() {
        // A move finished but stopped before the old folders went.
        std::fs::remove_dir_all(&cores).map_err(io(format!("removing {}", cores.display())))?;
        return Ok(());
    }
    let moving = store.join("db.moving");
    if moving.exists() {
        std::fs::remove_dir_all(&moving).map_err(io(format!("removing {}", moving.display())))?;
    }
    super::private_dir(&moving).map_err(io(format!("creating {}", moving.display())))?;
    let moved = (|| {
        let kv = Arc::new(Kv::open(&moving).map_err(|e| StoreError::Database {
            path: moving.clone(),
            reason: e.to_string(),
        })?);
        let mut moved = 0;
        for entry in
            std::fs::read_dir(&cores).map_err(io(format!("listing {}", cores.display())))?
        {
            let entry = entry.map_err(io(format!("listing {}", cores.display())))?;
            let dir = entry.path();
            let Some(key) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Key>().ok())
            else {
                tracing::warn!("{} is not a core folder; left as it is", dir.display());
                continue;
            };
            let ours = ledger.map_or(Some((String::new(), 0)), |l| l.by_key(&key));
            match import(&kv, &dir, key, ours.as_ref()) {
                Ok(()) => moved += 1,
                Err(e) if ours.is_none() => {
                    tracing::warn!(%key, "a replicated core does not check out and is left behind (peers have it): {e}");
                }
                Err(e) => return Err(e),
            }
        }
        kv.persist().map_err(|e| StoreError::Database {
            path: moving.clone(),
            reason: e.to_string(),
        })?;
        Ok(moved)
    })();
    let moved = match moved {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&moving);
            return Err(e);
        }
    };
    std::fs::rename(&moving, db).map_err(io(format!("renaming {}", moving.display())))?;
    if let Ok(d) = std::fs::File::open(store) {
        let _ = d.sync_all();
    }
    std::fs::remove_dir_all(&cores).map_err(io(format!("removing {}", cores.display())))?;
    tracing::info!(moved, "moved the store's cores into its database");
    Ok(())
}

/// Imports one core folder; `ours` is its name and recorded length when it is one of ours.
fn import(
    kv: &Arc<Kv>,
    dir: &Path,
    key: Key,
    ours: Option<&(String, u64)>,
) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Core { key, reason };
    let Some(recovered) = recover::recover(dir, key)? else {
        // No oplog header: nothing was ever written, unless the other files say otherwise.
        let written = ["tree", "data"]
            .iter()
            .any(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0));
        if written {
            return Err(corrupt(
                "its oplog has no header, but it holds blocks".into(),
            ));
        }
        return Ok(());
    };
    let oplog = std::fs::read(dir.join("oplog")).map_err(|source| StoreError::Io {
        context: format!("reading {}", dir.join("oplog").display()),
        source,
    })?;
    let header = match cohd_format::oplog::read(&oplog) {
        Ok(Some(log)) => log.header,
        Ok(None) => return Err(corrupt("its oplog has no header".into())),
        Err(e) => return Err(corrupt(format!("its oplog is damaged: {e}"))),
    };
    let head = &recovered.tree;
    let length = head.length;
    if let Some((name, recorded)) = ours {
        if length < *recorded {
            return Err(StoreError::LostBlocks {
                name: name.clone(),
                key,
                recorded: *recorded,
                found: format!("its files hold only {length}"),
            });
        }
    }
    let open = |name: &str| {
        std::fs::File::open(dir.join(name)).map_err(|source| StoreError::Io {
            context: format!("opening {}", dir.join(name).display()),
            source,
        })
    };
    let tree = open("tree")?;
    let data = open("data")?;

    let roots = recover::verify_tree(&tree, key, head).map_err(corrupt)?;
    let fail = |e: super::log::LogError| StoreError::Core {
        key,
        reason: e.to_string(),
    };
    let mut import = Import::new(kv, key).map_err(fail)?;
    // Nodes the file holds within the signed tree, kept only where they hash up to a root.
    let mut file: HashMap<u64, Node> = HashMap::new();
    for i in 0..length.saturating_mul(2) {
        if let Some(n) = recover::read_node(&tree, i).map_err(|e| corrupt(e.to_string()))? {
            file.insert(i, n);
        }
    }
    let mut good: HashMap<u64, Node> = roots.iter().map(|r| (r.index, *r)).collect();
    let mut todo: Vec<u64> = roots.iter().map(|r| r.index).collect();
    while let Some(i) = todo.pop() {
        let d = merkle::depth(i);
        if d == 0 {
            continue;
        }
        let half = 1u64 << (d - 1);
        let (l, r) = (i - half, i + half);
        if let (Some(a), Some(b)) = (file.get(&l), file.get(&r)) {
            if merkle::parent_node(a, b) == good[&i] {
                good.insert(l, *a);
                good.insert(r, *b);
                todo.extend([l, r]);
            }
        }
    }
    drop(file);
    let mut indices: Vec<&u64> = good.keys().collect();
    indices.sort();
    for i in indices {
        import.node(&good[i]).map_err(fail)?;
    }
    // Blocks held: the contiguous prefix and the recorded sparse ranges.
    let contiguous = header.contiguous_length.min(length);
    let held: Vec<Range<u64>> = std::iter::once(0..contiguous)
        .chain(recovered.present.iter().cloned())
        .collect();
    let mut kept: Vec<Range<u64>> = Vec::new();
    let mut next: Option<(u64, u64)> = None;
    for r in &held {
        for i in r.start..r.end.min(length) {
            let Some(&leaf) = good.get(&(2 * i)) else {
                continue;
            };
            let offset = match next {
                Some((n, at)) if n == i => at,
                _ => match offset_of(&good, i) {
                    Some(o) => o,
                    None => continue,
                },
            };
            let Ok(len) = usize::try_from(leaf.size) else {
                continue;
            };
            if len > (1 << 30) {
                continue;
            }
            let mut buf = vec![0u8; len];
            if data.read_exact_at(&mut buf, offset).is_err() || merkle::leaf_hash(&buf) != leaf.hash
            {
                tracing::info!(%key, block = i, "a stored block is damaged; not carried over");
                next = None;
                continue;
            }
            next = Some((i + 1, offset + leaf.size));
            import.block(i, buf).map_err(fail)?;
            match kept.last_mut() {
                Some(k) if k.end == i => k.end = i + 1,
                _ => kept.push(i..i + 1),
            }
        }
    }
    import
        .finish(
            length,
            head.fork,
            head.signature.clone(),
            &recovered.signed,
            &kept,
        )
        .map_err(fail)?;
    // Read back as the store will: the header, the roots and the signature must hold.
    match Log::open(kv.clone(), key, None, None, false) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(corrupt("the moved core is not in the database".into())),
        Err(e) => Err(corrupt(format!("the moved core does not read back: {e}"))),
    }
}

/// Where block `index` starts in the data file: the sizes of the full roots left of it.
fn offset_of(good: &HashMap<u64, Node>, index: u64) -> Option<u64> {
    let mut offset = 0u64;
    for r in merkle::full_roots(index) {
        offset = offset.checked_add(good.get(&r)?.size)?;
    }
    Some(offset)
}
