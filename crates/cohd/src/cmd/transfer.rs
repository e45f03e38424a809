//! import / export between a local folder and the co-drive.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use co_hyperdrive::codrive::CoDrive;
use co_hyperdrive::PutOptions;
use tokio::io::AsyncReadExt;

use super::read_snapshot;
use crate::output::{self, Out};

/// An import appends its files in batches of at most this many files…
const BATCH_FILES: usize = 64;
/// …or about this much content: one fsync per batch, and an interrupted import keeps every
/// batch it finished.
const BATCH_BYTES: u64 = 32 << 20;

/// Local files under `root` (not following symlinks), sorted, with sizes.
fn walk(root: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read folder {}", dir.display()))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push((e.path(), e.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) async fn import(co: &CoDrive, out: &mut Out, local: &Path, folder: &str) -> Result<()> {
    if !local.is_dir() {
        bail!("{} is not a folder", local.display());
    }
    let files = walk(local)?;
    let total: u64 = files.iter().map(|f| f.1).sum();
    let mut snap = co.snapshot().await?;
    let mut batch = snap.batch().await?;
    let pb = output::progress(out, total, "import");
    let base = co_hyperdrive::format::path::folder(folder);
    let mut buf = vec![0u8; 1 << 20];
    let mut batch_bytes = 0;
    for (p, _) in &files {
        let rel = p.strip_prefix(local).unwrap_or(p);
        let rel = rel
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", p.display()))?;
        #[cfg(unix)]
        let executable = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p)?.permissions().mode() & 0o111 != 0
        };
        #[cfg(not(unix))]
        let executable = false;
        let mut f = tokio::fs::File::open(p)
            .await
            .with_context(|| format!("cannot read {}", p.display()))?;
        let mut w = batch
            .writer(
                &format!("{base}/{rel}"),
                PutOptions {
                    executable,
                    metadata: None,
                },
            )
            .await?;
        loop {
            let n = f
                .read(&mut buf)
                .await
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).await?;
            pb.inc(n as u64);
            batch_bytes += n as u64;
        }
        w.finish().await?;
        if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
            batch.flush().await?;
            batch = snap.batch().await?;
            batch_bytes = 0;
        }
    }
    batch.flush().await?;
    pb.finish_and_clear();
    out.note(&format!(
        "imported {} files ({})",
        files.len(),
        output::size(total)
    ));
    Ok(())
}

pub(crate) async fn export(co: &CoDrive, out: &mut Out, folder: &str, local: &Path) -> Result<()> {
    let snap = read_snapshot(co).await?;
    let entries = snap.list(folder);
    let exact = snap.entry(folder).ok().flatten();
    if entries.is_empty() && exact.is_none() {
        bail!("nothing to export under {folder}");
    }
    let base = co_hyperdrive::format::path::folder(folder);
    let total: u64 = entries.iter().map(|e| e.entry.size()).sum();
    let pb = output::progress(out, total, "export");
    for e in &entries {
        let rel = &e.path[base.len() + 1..];
        // Paths are normalized (no `..`, no empty parts), so they stay inside `local`.
        let dest = local.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match (&e.entry.blob, &e.entry.linkname) {
            (None, Some(target)) => {
                #[cfg(unix)]
                {
                    let _ = std::fs::remove_file(&dest);
                    std::os::unix::fs::symlink(target, &dest)
                        .with_context(|| format!("creating link {}", dest.display()))?;
                }
            }
            _ => {
                let mut f = std::fs::File::create(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                let mut werr = None;
                snap.read_range(&e.path, 0, u64::MAX, |c| {
                    use std::io::Write;
                    if werr.is_none() {
                        if let Err(err) = f.write_all(c) {
                            werr = Some(err);
                        }
                    }
                    pb.inc(c.len() as u64);
                    Ok(())
                })
                .await?;
                if let Some(err) = werr {
                    return Err(err).with_context(|| format!("writing {}", dest.display()));
                }
                #[cfg(unix)]
                if e.entry.executable {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
                }
            }
        }
    }
    pb.finish_and_clear();
    out.note(&format!(
        "exported {} files ({})",
        entries.len(),
        output::size(total)
    ));
    Ok(())
}
