//! import / export between a local folder and the co-drive.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use co_hyperdrive::format::{path, Key};
use co_hyperdrive::BlobError;
use co_hyperdrive::{CoDrive, CoDriveError, Indexed, Snapshot};
use co_hyperdrive::{DriveError, PutOptions};
use std::io::Read;

use super::read_snapshot;
use crate::output::{self, Out};

/// An import appends its files in batches of at most this many files…
const BATCH_FILES: usize = 1024;
/// …or about this much content: one fsync per batch, and an interrupted import keeps every
/// batch it finished.
const BATCH_BYTES: u64 = 32 << 20;
/// `import --delete` deletes in batches of at most this many paths.
const DELETE_BATCH: usize = 1024;

/// Files and symlinks under a local folder (symlinks are not followed), in path order, read a
/// folder at a time: memory holds the folders on the way down, not every file of the tree.
/// Depth first with each folder's entries sorted by name is the order `Path` sorts in (it
/// compares component by component).
#[derive(Debug)]
struct Walk {
    /// The folders being walked, root first: their entries left to visit (the next one last),
    /// and whether a file or symlink was found anywhere below them.
    stack: Vec<(Vec<(PathBuf, std::fs::FileType)>, bool)>,
    /// Folders (the root excluded) with no file or symlink anywhere below them.
    empty_folders: usize,
    /// Entries that are neither a file, a folder nor a symlink (sockets, FIFOs, devices).
    others: Vec<PathBuf>,
}

#[derive(Debug)]
struct Item {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    File { size: u64, executable: bool },
    Link,
}

impl Walk {
    fn new(root: &Path) -> Result<Self> {
        Ok(Self {
            stack: vec![(read_sorted(root)?, false)],
            empty_folders: 0,
            others: Vec::new(),
        })
    }

    fn next(&mut self) -> Result<Option<Item>> {
        loop {
            let Some((entries, _)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some((path, ft)) = entries.pop() else {
                let (_, holds) = self.stack.pop().unwrap_or_default();
                if let Some(parent) = self.stack.last_mut() {
                    if holds {
                        parent.1 = true;
                    } else {
                        self.empty_folders += 1;
                    }
                }
                continue;
            };
            if ft.is_dir() {
                let entries = read_sorted(&path)?;
                self.stack.push((entries, false));
                continue;
            }
            let kind = if ft.is_file() {
                let m = std::fs::symlink_metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                #[cfg(unix)]
                let executable = {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                };
                #[cfg(not(unix))]
                let executable = false;
                Kind::File {
                    size: m.len(),
                    executable,
                }
            } else if ft.is_symlink() {
                Kind::Link
            } else {
                self.others.push(path);
                continue;
            };
            if let Some(top) = self.stack.last_mut() {
                top.1 = true;
            }
            return Ok(Some(Item { path, kind }));
        }
    }
}

/// A folder's entries, sorted by name, the first last.
fn read_sorted(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>> {
    let mut out = Vec::new();
    for e in
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?
    {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", e.path().display()))?;
        out.push((e.path(), ft));
    }
    out.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(out)
}

/// Whether an import of `local` into drive folder `base` (as from `path::folder`) writes drive
/// path `dp` (normalized, under `base`) from a local file or symlink at the same path: each of
/// its folders a real folder (an import does not follow symlinks), itself a file or a symlink.
/// (A local name that normalizes to another path, as one holding a backslash does, is not
/// found this way: an import collects those as it meets them.) Only "not there" counts as
/// absent: a path that cannot be looked at (permissions, I/O) is an error, never a delete.
fn imported_as_is(local: &Path, base: &str, dp: &str) -> Result<bool> {
    let Some(rel) = dp.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
        return Ok(false);
    };
    let mut at = local.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        let m = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            // Not there, or a name the local file system cannot even hold (a co-writer's
            // name longer than it allows).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::InvalidFilename
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(false)
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot tell whether {} is still there", at.display())
                })
            }
        };
        let ft = m.file_type();
        let ok = if parts.peek().is_some() {
            ft.is_dir()
        } else {
            ft.is_file() || ft.is_symlink()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a local symlink at `link` (relative to the imported folder) with target `target`
/// leads, as path components below the imported folder; `None` if it leads outside (or cannot
/// be a drive path). A relative target resolves from the link's folder, an absolute one must
/// lie below one of `roots` (the imported folder's absolute paths). Resolved lexically, as
/// the drive resolves its links: a symlink on the way is not followed.
fn import_link_target(roots: &[PathBuf], link: &Path, target: &Path) -> Option<Vec<String>> {
    let (mut parts, rest): (Vec<String>, &Path) = if target.has_root() {
        let rest = roots.iter().find_map(|r| target.strip_prefix(r).ok())?;
        (Vec::new(), rest)
    } else {
        let from = link.parent().unwrap_or(Path::new(""));
        let parts = from
            .components()
            .map(|c| match c {
                Component::Normal(s) => s.to_str().map(str::to_string),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        (parts, target)
    };
    for c in rest.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            // Climbing above the imported folder is leaving it.
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.iter().any(|p| p.contains(['\0', '\\'])) {
        return None;
    }
    Some(parts)
}

/// Opens a local file to import. Plain blocking reads, on purpose: a tokio file operation is a
/// hop to the blocking thread pool each time, which cost more than the import's own work on
/// folders of many small files; a read of a local file is short.
fn local_file(p: &Path) -> Result<std::fs::File> {
    std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Whether the local file `p` holds exactly the content of drive file `dp` (`size` bytes
/// long), read in chunks from both and stopping at the first difference. Content this store
/// does not hold counts as different: reading it would wait for peers.
async fn same_content(
    snap: &Indexed<'_>,
    dp: &str,
    p: &Path,
    size: u64,
    mine: &mut [u8],
    theirs: &mut Vec<u8>,
) -> Result<bool> {
    if !snap.is_local(dp).await? {
        return Ok(false);
    }
    let mut f = local_file(p)?;
    let mut pos = 0u64;
    loop {
        // Fill the chunk (a read may return less), so both sides compare the same range.
        let mut n = 0;
        while n < mine.len() {
            let r = f
                .read(&mut mine[n..])
                .with_context(|| format!("reading {}", p.display()))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            // The local file may have changed since it was listed.
            return Ok(pos == size);
        }
        theirs.clear();
        let read = snap
            .read_range(dp, pos, n as u64, |c| {
                theirs.extend_from_slice(c);
                Ok(())
            })
            .await;
        match read {
            Ok(_) => {}
            Err(CoDriveError::Drive(DriveError::Blob(
                BlobError::NotAvailable(_) | BlobError::Unavailable(_),
            ))) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if theirs[..] != mine[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
}

/// `n` and the noun, plural unless one.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Imports local folder `local` into drive folder `folder`. Files the drive already holds
/// unchanged (same size, executable bit and content) are not written again; symlinks that stay
/// inside `local` become drive links to the matching absolute drive path. With `delete`, the
/// drive files under `folder` that `local` does not have are deleted afterwards.
pub(crate) async fn import(
    co: &CoDrive,
    out: &mut Out,
    local: &Path,
    folder: &str,
    delete: bool,
) -> Result<()> {
    if !local.is_dir() {
        bail!("{} is not a folder", local.display());
    }
    super::files::refuse_clash_folder(co, folder).await?;
    // Comparisons read the index on disk path by path (no full merge: an import of a few
    // files into a big drive costs what it writes).
    let cur = co.indexed().await?;
    let base = path::folder(folder);
    // A folder where the drive has a file, or a file where it has a folder, would be a clash
    // of our own: the first is refused before anything is written (each folder looked up
    // once), the second where the import looks the path up anyway (below). Nothing to check
    // when the drive holds nothing under the folder, or with `--delete` (what the local
    // folder lacks goes).
    let check = !delete && cur.is_folder(&base)?;
    let mut checked = HashSet::new();
    // A first walk counts (for the progress bar, and the checks below); the second imports.
    let (mut found, mut total) = (0usize, 0u64);
    let mut counting = Walk::new(local)?;
    while let Some(it) = counting.next()? {
        found += 1;
        if let Kind::File { size, .. } = it.kind {
            total += size;
        }
        if check {
            let rel = it.path.strip_prefix(local).unwrap_or(&it.path);
            // (A path that cannot be a drive path is reported by the import itself.)
            let Some(dp) = rel
                .to_str()
                .and_then(|r| path::normalize(&format!("{base}/{r}")).ok())
            else {
                continue;
            };
            let mut a = path::parent(&dp);
            while a != "/" && a.len() > base.len() && checked.insert(a.to_string()) {
                if cur.entry(a)?.is_some_and(|e| e.entry.blob.is_some()) {
                    bail!(
                        "nothing was imported: {a} is a file in the drive, and {} lies in a \
                         folder there",
                        it.path.display()
                    );
                }
                a = path::parent(a);
            }
        }
    }
    // Mirroring an empty folder would delete everything under the drive folder: a mistake far
    // more often than a wish (`cohd rm -r` says it plainly).
    if delete && found == 0 {
        bail!(
            "refusing `--delete` from an empty folder ({}): it would delete everything under \
             {folder} (use `cohd rm -r {folder}` for that)",
            local.display()
        );
    }
    // Absolute links name the folder by any of its absolute paths.
    let mut roots: Vec<PathBuf> = Vec::new();
    for r in [std::path::absolute(local), local.canonicalize()]
        .into_iter()
        .flatten()
    {
        if !roots.contains(&r) {
            roots.push(r);
        }
    }
    // Each path is met once, so what earlier batches of this import wrote never changes a
    // later comparison. A batch holds the local writer's drive until flushed; an empty one
    // appends nothing.
    let mut batch = co.batch().await?;
    let pb = output::progress(out, total, "import");
    let mut buf = vec![0u8; 1 << 20];
    let mut theirs = Vec::with_capacity(1 << 20);
    let mut batch_bytes = 0;
    let (mut files, mut bytes, mut links, mut unchanged) = (0usize, 0u64, 0usize, 0usize);
    // For `delete`: drive paths the local folder has under another name (see
    // `imported_as_is`), whether written or not.
    let mut renamed = HashSet::new();
    let mut walk = Walk::new(local)?;
    while let Some(it) = walk.next()? {
        let p = &it.path;
        let rel = p.strip_prefix(local).unwrap_or(p);
        let rel_s = rel
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", p.display()))?;
        let dp = path::normalize(&format!("{base}/{rel_s}"))
            .with_context(|| format!("{} cannot be a drive path", p.display()))?;
        // (A name the drive path does not spell as is: one holding a backslash.)
        if delete && dp != format!("{base}/{rel_s}") {
            renamed.insert(dp.clone());
        }
        let now = cur.entry(&dp)?;
        // A new path where the drive has a folder (a clash of our own): checked here, where
        // the path is looked up anyway, so an unchanged re-import pays nothing for it.
        if check && now.is_none() && cur.is_folder(&dp)? {
            // What was imported before it is kept (and said).
            batch.flush().await?;
            bail!(
                "{dp} is a folder in the drive, and {} is not: imported {files} file(s) before \
                 it (rename one of them, then import again)",
                p.display()
            );
        }
        // A conflicted path is written even when its winner matches: that settles it.
        let now = now.filter(|e| e.conflicts.is_empty());
        match it.kind {
            Kind::Link => {
                let target = std::fs::read_link(p)
                    .with_context(|| format!("reading the link {}", p.display()))?;
                let Some(parts) = import_link_target(&roots, rel, &target) else {
                    out.note(&format!(
                        "warning: skipped link {} -> {}: it leads outside {}",
                        p.display(),
                        target.display(),
                        local.display()
                    ));
                    continue;
                };
                let target = path::resolve(&format!("{base}/{}", parts.join("/")));
                let same = now.is_some_and(|e| {
                    e.entry.blob.is_none() && e.entry.linkname.as_deref() == Some(target.as_str())
                });
                if same {
                    unchanged += 1;
                    continue;
                }
                batch.symlink(&dp, &target).await?;
                links += 1;
            }
            Kind::File { size, executable } => {
                let same = match now {
                    Some(e)
                        if e.entry.blob.is_some()
                            && e.entry.size() == size
                            && e.entry.executable == executable =>
                    {
                        same_content(&cur, &dp, p, size, &mut buf, &mut theirs).await?
                    }
                    _ => false,
                };
                if same {
                    unchanged += 1;
                    pb.inc(size);
                    continue;
                }
                let mut f = local_file(p)?;
                let mut w = batch
                    .writer(
                        &dp,
                        PutOptions {
                            executable,
                            metadata: None,
                        },
                    )
                    .await?;
                loop {
                    let n = f
                        .read(&mut buf)
                        .with_context(|| format!("reading {}", p.display()))?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n]).await?;
                    pb.inc(n as u64);
                    batch_bytes += n as u64;
                    bytes += n as u64;
                }
                w.finish().await?;
                files += 1;
            }
        }
        if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
            batch.flush().await?;
            batch = co.batch().await?;
            batch_bytes = 0;
        }
    }
    batch.flush().await?;
    pb.finish_and_clear();
    let mut deleted = 0;
    if delete {
        // The drive's entries under the folder a page at a time, each checked against the
        // local folder; deletes batched too (a batch holds its entries until flushed).
        let mut after: Option<String> = None;
        loop {
            let page = co
                .indexed()
                .await?
                .entries_after(&base, after.as_deref(), DELETE_BATCH)?;
            let Some(last) = page.last() else { break };
            after = Some(last.path.clone());
            let mut b = co.batch().await?;
            for e in &page {
                if !renamed.contains(&e.path)
                    && !imported_as_is(local, &base, &e.path)?
                    && b.del(&e.path).await?
                {
                    deleted += 1;
                }
            }
            b.flush().await?;
        }
    }
    for p in &walk.others {
        out.note(&format!(
            "warning: skipped {}: not a file, folder or symlink",
            p.display()
        ));
    }
    let mut summary = format!(
        "imported {} ({})",
        count(files, "file", "files"),
        output::size(bytes)
    );
    if links > 0 {
        summary.push_str(&format!(" and {}", count(links, "link", "links")));
    }
    if unchanged > 0 {
        summary.push_str(&format!(", {unchanged} unchanged"));
    }
    if delete {
        summary.push_str(&format!(", {deleted} deleted"));
    }
    out.note(&summary);
    if walk.empty_folders > 0 {
        out.note(&format!(
            "skipped {} (a drive holds files, not folders)",
            count(walk.empty_folders, "empty folder", "empty folders")
        ));
    }
    Ok(())
}

/// Where a drive symlink points, seen from an export of one drive folder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkTarget {
    /// Inside the exported folder: the relative local link target that reaches the same place.
    Inside(String),
    /// Outside the exported folder: the drive path it resolves to.
    Outside(String),
    /// Not a usable local link target (a NUL byte).
    Invalid,
}

/// Resolves the symlink at drive path `link` (normalized, under `base`) with target `linkname`,
/// for an export of drive folder `base` (as from `path::folder`: `""` for the root).
///
/// The target resolves as the merged view resolves it (`Snapshot::stat`, like Hyperdrive): an
/// absolute target from the drive's root, a relative one from the link's own path. The result
/// is always relative, and its `..` steps only climb the real folders that hold the link, so the
/// exported tree stays self-contained and never reaches past its root.
fn local_link_target(base: &str, link: &str, linkname: &str) -> LinkTarget {
    let joined = if linkname.starts_with('/') {
        linkname.to_string()
    } else {
        format!("{link}/{linkname}")
    };
    let target = path::resolve(&joined);
    if target.contains('\0') {
        return LinkTarget::Invalid;
    }
    if !path::is_under(&target, base) || !path::is_under(link, base) || link == base {
        return LinkTarget::Outside(target);
    }
    let below = |p: &str| -> Vec<String> {
        p[base.len().min(p.len())..]
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let from = below(path::parent(link));
    let to = below(&target);
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(to[common..].iter().map(String::as_str));
    if parts.is_empty() {
        LinkTarget::Inside(".".to_string())
    } else {
        LinkTarget::Inside(parts.join("/"))
    }
}

/// The local path components of drive path `p` below `base`, or `None` if one cannot be a
/// local file name (drive paths are normalized, but a NUL byte survives normalization).
fn local_parts<'p>(p: &'p str, base: &str) -> Option<Vec<&'p str>> {
    let rest = p.strip_prefix(base)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let bad = |s: &str| s.is_empty() || s == "." || s == ".." || s.contains(['\0', '\\']);
    if parts.iter().any(|s| bad(s)) {
        return None;
    }
    Some(parts)
}

/// Makes `local/parts…` a chain of real folders, creating what is missing, and returns it.
/// Fails on a symlink in the way (already in the target: it may point anywhere) and on a file.
/// `known` holds the folders already checked by this export: the export creates no symlink
/// before its last file, so they stay folders.
fn real_folders(local: &Path, parts: &[&str], known: &mut HashSet<PathBuf>) -> Result<PathBuf> {
    Ok(walk_folders(local, parts, known, true)?.unwrap_or_default())
}

/// The walk of [`real_folders`]; without `create`, it stops at the first folder missing
/// (nothing below one the export makes can be in the way) and returns `None` there.
fn walk_folders(
    local: &Path,
    parts: &[&str],
    known: &mut HashSet<PathBuf>,
    create: bool,
) -> Result<Option<PathBuf>> {
    let mut p = local.to_path_buf();
    for part in parts {
        p.push(part);
        if known.contains(&p) {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "refusing to write through the symlink {} (it may lead outside {})",
                p.display(),
                local.display()
            ),
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("cannot create folder {}: a file is in the way", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
        known.insert(p.clone());
    }
    Ok(Some(p))
}

/// The first of normalized `paths` that another lies below (a file/folder clash).
fn file_and_folder<'p>(paths: impl Iterator<Item = &'p str> + Clone) -> Option<&'p str> {
    let all: HashSet<&str> = paths.clone().collect();
    paths.into_iter().find_map(|p| {
        let mut a = path::parent(p);
        while a != "/" {
            if let Some(hit) = all.get(a) {
                return Some(*hit);
            }
            a = path::parent(a);
        }
        None
    })
}

/// What [`real_folders`] and [`create_file`] would refuse on the way to `parts` under
/// `local`, found without writing anything: an export checks every file's place first, so that
/// one it must refuse leaves no half-written tree. (They check again as they write: the tree
/// can change in between.)
fn check_place(
    local: &Path,
    dirs: &[&str],
    name: Option<&str>,
    seen: &mut HashSet<PathBuf>,
) -> Result<()> {
    // A file's place must not be a folder (a link's may: it is skipped with a warning).
    let (Some(p), Some(name)) = (walk_folders(local, dirs, seen, false)?, name) else {
        return Ok(());
    };
    let dest = p.join(name);
    match std::fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => bail!("cannot write {}: a folder is in the way", dest.display()),
        _ => Ok(()),
    }
}

/// Creates the file `dest` afresh. A file or symlink already there is removed first, never
/// written through: a link may point anywhere, a hard link shares its content with a file
/// elsewhere. `create_new` (O_EXCL) also refuses a link that appears in between.
fn create_file(dest: &Path) -> Result<std::fs::File> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => bail!("cannot write {}: a folder is in the way", dest.display()),
        Ok(_) => {
            std::fs::remove_file(dest).with_context(|| format!("replacing {}", dest.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))
}

/// Exports drive folder `folder` into `local`. Files and folders come first and symlinks last,
/// so no file is ever written through a link the export made; every folder on the way must be
/// a real folder. Links become relative links within the export; one that leads outside the
/// exported folder is skipped with a warning.
pub(crate) async fn export(co: &CoDrive, out: &mut Out, folder: &str, local: &Path) -> Result<()> {
    let snap = read_snapshot(co).await?;
    let entries = snap.list(folder);
    let exact = snap.entry(folder).ok().flatten();
    if entries.is_empty() {
        match exact {
            // Exporting nothing and saying so would be a success for work not done.
            Some(_) => bail!(
                "{folder} is a file, not a folder: `cohd cat {folder} > FILE` copies one file"
            ),
            None => bail!("nothing to export under {folder}"),
        }
    }
    if local.exists() && !local.is_dir() {
        bail!(
            "{} is not a folder: export writes into a folder",
            local.display()
        );
    }
    let base = path::folder(folder);
    let shown = if base.is_empty() { "/" } else { base.as_str() };
    let (links, files): (Vec<_>, Vec<_>) = entries
        .iter()
        .partition(|e| e.entry.blob.is_none() && e.entry.linkname.is_some());
    let total: u64 = files.iter().map(|e| e.entry.size()).sum();
    // Every byte it will write is made local before the first file is: a sparse clone fetches
    // what it lacks from connected peers now, or fails here, leaving no half-exported tree.
    let bar = output::progress_blocks("download");
    let fetched = snap
        .download_with(folder, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    fetched.context("nothing was exported")?;
    // A file/folder clash in the drive: one of the two cannot be written.
    if let Some(a) = file_and_folder(files.iter().map(|e| e.path.as_str())) {
        bail!(
            "nothing was exported: {a} is both a file and a folder in the drive (`cohd \
             conflicts` shows the clash; `cohd rm` one of them first)"
        );
    }
    // Every place a file, a link or a conflict copy goes, before the first is written.
    let mut seen = HashSet::new();
    for (e, file) in files
        .iter()
        .map(|e| (e, true))
        .chain(links.iter().map(|e| (e, false)))
    {
        if let Some((name, dirs)) = local_parts(&e.path, &base)
            .as_ref()
            .and_then(|p| p.split_last())
        {
            check_place(local, dirs, file.then_some(*name), &mut seen)
                .context("nothing was exported")?;
        }
    }
    for (p, r) in snap
        .view()
        .conflicts()
        .filter(|(p, _)| path::is_under(p, &base))
    {
        let Some(parts) = local_parts(p, &base) else {
            continue;
        };
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let copied = r.conflicts.iter().filter(|v| {
            (v.writer, v.seq) != (r.winner.writer, r.winner.seq)
                && v.entry.as_ref().is_some_and(|e| e.blob.is_some())
        });
        for v in copied {
            let cname = conflict_name(name, &v.writer);
            check_place(local, dirs, Some(&cname), &mut seen).context("nothing was exported")?;
        }
    }
    std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
    let mut known = HashSet::new();
    let mut skipped = 0usize;
    let pb = output::progress(out, total, "export");
    for e in &files {
        let Some(parts) = local_parts(&e.path, &base) else {
            out.note(&format!(
                "warning: skipped {:?}: not a local file name",
                e.path
            ));
            skipped += 1;
            continue;
        };
        let (name, dirs) = parts.split_last().context("empty path")?;
        let dest = real_folders(local, dirs, &mut known)?.join(name);
        let mut f = create_file(&dest)?;
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
            // On the open file: a path could have been swapped for a link by now.
            f.set_permissions(std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting the mode of {}", dest.display()))?;
        }
    }
    pb.finish_and_clear();
    let copies = export_conflicts(co, &snap, out, &base, local, &mut known, &mut skipped).await?;
    let mut made = 0usize;
    for e in &links {
        let linkname = e.entry.linkname.as_deref().unwrap_or_default();
        // Escaped: drive data must not break the warning's line (or drive the terminal).
        let mut skip = |out: &mut Out, why: &str| {
            out.note(&format!(
                "warning: skipped link {} -> {}: {why}",
                e.path.escape_debug(),
                linkname.escape_debug()
            ));
            skipped += 1;
        };
        let target = match local_link_target(&base, &e.path, linkname) {
            LinkTarget::Inside(t) => t,
            LinkTarget::Outside(t) => {
                skip(
                    out,
                    &format!("it leads to {}, outside {shown}", t.escape_debug()),
                );
                continue;
            }
            LinkTarget::Invalid => {
                skip(out, "not a usable link target");
                continue;
            }
        };
        let Some(parts) = local_parts(&e.path, &base) else {
            skip(out, "not a local file name");
            continue;
        };
        let (name, dirs) = parts.split_last().context("empty path")?;
        let dest = real_folders(local, dirs, &mut known)?.join(name);
        match std::fs::symlink_metadata(&dest) {
            // The drive also has files below this path: they were exported as a folder.
            Ok(m) if m.is_dir() => {
                skip(out, &format!("{} is a folder", dest.display()));
                continue;
            }
            // A link or file left by an earlier export: replaced (removing a link leaves its
            // target alone).
            Ok(_) => std::fs::remove_file(&dest)
                .with_context(|| format!("replacing {}", dest.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("reading {}", dest.display())),
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &dest)
                .with_context(|| format!("creating link {}", dest.display()))?;
            made += 1;
        }
        #[cfg(not(unix))]
        skip(out, "symlinks are not supported here");
    }
    let mut summary = format!(
        "exported {} ({})",
        count(files.len(), "file", "files"),
        output::size(total)
    );
    if made > 0 {
        summary.push_str(&format!(" and {}", count(made, "link", "links")));
    }
    if copies > 0 {
        summary.push_str(&format!(
            ", {} of conflicting versions",
            count(copies, "copy", "copies")
        ));
    }
    if skipped > 0 {
        summary.push_str(&format!("; skipped {skipped} (see the warnings)"));
    }
    out.note(&summary);
    Ok(())
}

/// The name under which `export` writes another writer's version of file `name`, Syncthing
/// style: `report.conflict-1a2b3c4d.txt` beside `report.txt` (the writer's first 8 hex digits
/// before the last extension; a name without one, or a dot file, gets it at the end).
pub(crate) fn conflict_name(name: &str, writer: &Key) -> String {
    let tag = format!("conflict-{}", &writer.to_hex()[..8]);
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
            format!("{stem}.{tag}.{ext}")
        }
        _ => format!("{name}.{tag}"),
    }
}

/// Writes every losing version of each conflicted file under `base` beside its path (see
/// [`conflict_name`]), through the same checks as the export's other files; a version whose
/// path is taken by a drive file, a delete and a symlink are not written. Includes paths whose
/// winner is a delete: the concurrent edit is kept. Returns the copies written.
async fn export_conflicts(
    co: &CoDrive,
    snap: &Snapshot<'_>,
    out: &mut Out,
    base: &str,
    local: &Path,
    known: &mut HashSet<PathBuf>,
    skipped: &mut usize,
) -> Result<usize> {
    let view = snap.view();
    let mut copies = 0;
    for (p, r) in view.conflicts().filter(|(p, _)| path::is_under(p, base)) {
        let Some(parts) = local_parts(p, base) else {
            continue;
        };
        let (name, dirs) = parts.split_last().context("empty path")?;
        for v in &r.conflicts {
            if (v.writer, v.seq) == (r.winner.writer, r.winner.seq) {
                continue;
            }
            let Some(blob) = v.entry.as_ref().and_then(|e| e.blob) else {
                continue;
            };
            let cname = conflict_name(name, &v.writer);
            let drive_path = format!("{}/{cname}", path::parent(p).trim_end_matches('/'));
            if snap.entry(&drive_path).ok().flatten().is_some()
                || !snap.readdir(&drive_path).is_empty()
            {
                out.note(&format!(
                    "warning: skipped the version of {} by {}: {} is taken in the drive",
                    p.escape_debug(),
                    v.writer,
                    drive_path.escape_debug()
                ));
                *skipped += 1;
                continue;
            }
            let dest = real_folders(local, dirs, known)?.join(&cname);
            let mut f = create_file(&dest)?;
            let mut werr = None;
            co.read_content(v.writer, &blob, 0, u64::MAX, |c| {
                use std::io::Write;
                if werr.is_none() {
                    if let Err(err) = f.write_all(c) {
                        werr = Some(err);
                    }
                }
                Ok(())
            })
            .await?;
            if let Some(err) = werr {
                return Err(err).with_context(|| format!("writing {}", dest.display()));
            }
            #[cfg(unix)]
            if v.entry.as_ref().is_some_and(|e| e.executable) {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("setting the mode of {}", dest.display()))?;
            }
            copies += 1;
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk yields what sorting every path would, a folder at a time, and counts the
    /// folders that hold no file.
    #[test]
    fn the_walk_is_in_path_order_and_counts_empty_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in ["b/x", "a.b", "a/y", "a/z/w", "c", "a-"] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, f).expect("write");
        }
        for d in ["a/empty", "e/f", "b/g"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let mut w = Walk::new(root).expect("walk");
        let mut got = Vec::new();
        while let Some(it) = w.next().expect("next") {
            got.push(it.path.strip_prefix(root).expect("under").to_path_buf());
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        let names: Vec<_> = got.iter().map(|p| p.to_str().expect("utf8")).collect();
        assert_eq!(names, ["a/y", "a/z/w", "a-", "a.b", "b/x", "c"]);
        // a/empty, e/f and e (holding only an empty folder), b/g.
        assert_eq!(w.empty_folders, 4);
    }

    fn inside(t: &str) -> LinkTarget {
        LinkTarget::Inside(t.to_string())
    }

    #[test]
    fn links_become_relative_within_the_export() {
        // From the root, every drive-absolute target is inside.
        assert_eq!(local_link_target("", "/l", "/a/two"), inside("a/two"));
        assert_eq!(
            local_link_target("", "/evil", "/some/outside/dir"),
            inside("some/outside/dir")
        );
        assert_eq!(local_link_target("", "/a/b/l", "/a/c"), inside("../c"));
        assert_eq!(local_link_target("", "/a/b/l", "/a/b"), inside("."));
        assert_eq!(local_link_target("", "/a/b/l", "/"), inside("../.."));
        // `..` never climbs above the drive's root.
        assert_eq!(
            local_link_target("", "/l", "../../../../etc/passwd"),
            inside("etc/passwd")
        );
        // Relative targets resolve from the link's own path, as `Snapshot::stat` does.
        assert_eq!(local_link_target("", "/a/rel", "two"), inside("rel/two"));
        assert_eq!(local_link_target("", "/a/l", "../x"), inside("x"));
        assert_eq!(local_link_target("", "/a/l", "..\\..\\x"), inside("../x"));
        // A subfolder export.
        assert_eq!(local_link_target("/a", "/a/b/l", "/a"), inside(".."));
        assert_eq!(local_link_target("/a", "/a/l", "/a"), inside("."));
        assert_eq!(
            local_link_target("/a", "/a/b/c/l", "/a/d/e"),
            inside("../../d/e")
        );
    }

    #[test]
    fn links_leading_outside_the_export_are_refused() {
        let out = |t: &str| LinkTarget::Outside(t.to_string());
        assert_eq!(
            local_link_target("/docs", "/docs/evil", "/etc"),
            out("/etc")
        );
        assert_eq!(local_link_target("/a", "/a/l", "../../.."), out("/"));
        // A sibling that merely shares the prefix is outside.
        assert_eq!(local_link_target("/a", "/a/l", "/ab/x"), out("/ab/x"));
        assert_eq!(local_link_target("/a/b", "/a/b/l", "../../c"), out("/a/c"));
        // A link that is not below the exported folder is never made.
        assert_eq!(local_link_target("/a", "/b/l", "/a/x"), out("/a/x"));
        assert_eq!(local_link_target("/a", "/a", "/a/x"), out("/a/x"));
        assert_eq!(local_link_target("", "/l", "/a\0b"), LinkTarget::Invalid);
    }

    #[test]
    fn import_links_stay_inside_the_folder() {
        let roots = [PathBuf::from("/home/u/site"), PathBuf::from("/data/site")];
        let t = |link: &str, target: &str| {
            import_link_target(&roots, Path::new(link), Path::new(target)).map(|p| p.join("/"))
        };
        // Relative targets resolve from the link's folder.
        assert_eq!(t("latest", "docs/a.txt").as_deref(), Some("docs/a.txt"));
        assert_eq!(t("docs/back", "../top.txt").as_deref(), Some("top.txt"));
        assert_eq!(t("a/b/l", "./../c/./d").as_deref(), Some("a/c/d"));
        assert_eq!(t("a/l", "..").as_deref(), Some(""));
        // Absolute targets under any of the folder's absolute paths.
        assert_eq!(t("a/l", "/home/u/site/x").as_deref(), Some("x"));
        assert_eq!(t("l", "/data/site").as_deref(), Some(""));
        // Outside.
        assert_eq!(t("l", "../secret"), None);
        assert_eq!(t("a/l", "../../x"), None);
        assert_eq!(t("l", "/etc/passwd"), None);
        assert_eq!(t("l", "/home/u/sitemap/x"), None);
        assert_eq!(t("l", "/home/u/site/../other"), None);
        // Not a usable drive path.
        assert_eq!(t("l", "a\\b"), None);
    }

    #[test]
    fn conflict_names_keep_the_extension() {
        let w: Key = "1a2b3c4d".repeat(8).parse().unwrap();
        assert_eq!(conflict_name("a.txt", &w), "a.conflict-1a2b3c4d.txt");
        assert_eq!(conflict_name("x.tar.gz", &w), "x.tar.conflict-1a2b3c4d.gz");
        assert_eq!(conflict_name("README", &w), "README.conflict-1a2b3c4d");
        assert_eq!(conflict_name(".bashrc", &w), ".bashrc.conflict-1a2b3c4d");
        assert_eq!(conflict_name("a.", &w), "a..conflict-1a2b3c4d");
    }

    #[test]
    fn a_path_below_another_is_a_clash() {
        let clash = |v: &[&'static str]| file_and_folder(v.iter().copied());
        assert_eq!(clash(&["/a", "/b/c", "/d"]), None);
        assert_eq!(clash(&["/docs", "/docs/a.txt"]), Some("/docs"));
        assert_eq!(clash(&["/x/y/z", "/x"]), Some("/x"));
        assert_eq!(clash(&["/ab", "/a/b"]), None);
        assert_eq!(clash(&[]), None);
    }

    #[test]
    fn local_parts_refuses_unusable_names() {
        assert_eq!(local_parts("/a/b/c", "/a"), Some(vec!["b", "c"]));
        assert_eq!(local_parts("/a/b", ""), Some(vec!["a", "b"]));
        assert_eq!(local_parts("/ab/c", "/a"), None);
        assert_eq!(local_parts("/a", "/a"), None);
        assert_eq!(local_parts("/a/../b", ""), None);
        assert_eq!(local_parts("/a//b", ""), None);
        assert_eq!(local_parts("/a/x\0y", ""), None);
        assert_eq!(local_parts("/a/x\\y", ""), None);
    }
}
