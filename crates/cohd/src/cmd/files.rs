//! File commands over the merged co-drive view: put, cat, ls, rm, stat; and info (own drive).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use co_hyperdrive::format::{path, Key};
use co_hyperdrive::view::Resolved;
use co_hyperdrive::PutOptions;
use co_hyperdrive::{CoDrive, CoDriveError, CoEntry, Frontier, Indexed, PathVersion, Snapshot};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Io;
use crate::output::{self, Out};

/// `cat` reads a file in pieces of this size, so a forwarding client gets it as it goes.
const CAT_PIECE: u64 = 4 << 20;

/// What a read reads: the index on disk (the current view, O(log n) a lookup), or with `--at`
/// a checkout of a past version, merged from the logs.
pub(crate) enum Reader<'a> {
    Now(Indexed<'a>),
    At(Snapshot<'a>),
}

impl Reader<'_> {
    fn entry(&self, name: &str) -> Result<Option<CoEntry>> {
        Ok(match self {
            Reader::Now(i) => i.entry(name)?,
            Reader::At(s) => s.entry(name)?,
        })
    }

    fn readdir(&self, folder: &str) -> Result<Vec<String>> {
        Ok(match self {
            Reader::Now(i) => i.readdir(folder)?,
            Reader::At(s) => s.readdir(folder),
        })
    }

    /// Every visible entry under `folder`, recursively, in path order, one at a time.
    fn each_entry(&self, folder: &str, f: impl FnMut(CoEntry) -> Result<()>) -> Result<()> {
        match self {
            Reader::Now(i) => i.for_each_entry(folder, f),
            Reader::At(s) => s.list(folder).into_iter().try_for_each(f),
        }
    }

    fn resolved(&self, p: &str) -> Result<Option<Resolved>> {
        Ok(match self {
            Reader::Now(i) => i.resolved(p)?,
            Reader::At(s) => s.view().paths.get(p).cloned(),
        })
    }

    async fn read_range(
        &self,
        name: &str,
        start: u64,
        len: u64,
        sink: impl FnMut(&[u8]) -> Result<(), co_hyperdrive::BlobError>,
    ) -> Result<u64> {
        Ok(match self {
            Reader::Now(i) => i.read_range(name, start, len, sink).await?,
            Reader::At(s) => s.read_range(name, start, len, sink).await?,
        })
    }
}

/// The current view from the index; reading a co-drive whose primary drive the store does not
/// hold is an error (there would be nothing to show).
pub(crate) async fn read_indexed(co: &CoDrive) -> Result<Indexed<'_>> {
    let idx = co.indexed().await?;
    if idx.missing().contains(&co.key()) {
        bail!("drive {} is not in this store", co.key());
    }
    // A co-drive followed from elsewhere whose primary drive has not one block here (not
    // even the header it starts with): nothing of it arrived (a clone that failed), which must
    // not read as an empty co-drive. (Our own drive may not have written its header yet.)
    if co.key() != co.local_key() && idx.version().get(&co.key()) == 0 {
        bail!(
            "nothing of co-drive {} is in this store yet: run `cohd sync --peer HOST:PORT` \
             (or `cohd clone` again) to fetch it",
            co.key()
        );
    }
    Ok(idx)
}

/// The merged view a read shows: the current one, or with `--at` the read-only checkout at that
/// version.
async fn snapshot_at<'a>(co: &'a CoDrive, at: Option<&str>) -> Result<Reader<'a>> {
    let Some(at) = at else {
        return Ok(Reader::Now(read_indexed(co).await?));
    };
    // A time (`2026-12-06T10:00:00Z`, or a date for the end of that day) or a version.
    let version: Frontier = match crate::output::parse_utc(at) {
        Some(ms) => {
            let v = co.version_at_time(ms).await?;
            if v.get(&co.key()) == 0 {
                bail!("co-drive {} has no version at or before {at}", co.key());
            }
            v
        }
        None => at.parse().with_context(|| {
            format!(
                "--at {at}: neither a UTC time (2026-12-06T10:00:00Z, or a date for its end) \
                 nor a version (`frontier` in `cohd info --json`)"
            )
        })?,
    };
    let snap = match co.checkout(&version).await {
        Err(CoDriveError::BeyondStore {
            writer,
            wanted,
            held,
        }) => bail!(
            "--at {at}: this store does not have that version yet (it names {wanted} records of \
             writer {writer}, this store has {held}): sync with a peer that has it first"
        ),
        r => r?,
    };
    if snap.missing().contains(&co.key()) {
        bail!(
            "--at names no length for the co-drive's primary {}: not a version of this co-drive",
            co.key()
        );
    }
    Ok(Reader::At(snap))
}

/// `info` describes this store's own drive (the local writer's), plus which co-drive it is in
/// and that co-drive's version.
pub(crate) async fn info(co: &CoDrive, out: &mut Out, json: bool) -> Result<()> {
    // The co-drive's version needs every writer's data; a writer that cannot be read does not
    // stop `info` from describing this store's own drive.
    let idx = co.indexed().await;
    let frontier = idx.as_ref().map(|i| i.version().to_string());
    // Whether writes count: the local writer must be in the co-drive's writer set.
    let writer = idx.as_ref().is_ok_and(|i| i.is_writer());
    let removed = idx
        .as_ref()
        .is_ok_and(|i| i.removed().contains_key(&co.local_key()));
    let drive = co.own();
    let db = drive.db().core().info();
    let blobs = drive.blobs().core().info();
    if json {
        let v = serde_json::json!({
            "key": drive.key().to_hex(),
            "id": drive.key().to_z32(),
            "blobs_key": drive.blobs_key().to_hex(),
            "writable": drive.writable() && writer,
            "version": drive.version(),
            "db": { "length": db.length, "byte_length": db.byte_length },
            "blobs": { "length": blobs.length, "byte_length": blobs.byte_length },
            "codrive": co.key().to_hex(),
            "local_writer": co.local_key().to_hex(),
            "frontier": frontier.as_ref().ok(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "key:       {}", drive.key())?;
        writeln!(out, "id:        {}", drive.key().to_z32())?;
        if drive.writable() && writer {
            writeln!(out, "writable:  true")?;
        } else if removed {
            writeln!(
                out,
                "writable:  false (removed from co-drive {} by one of its writers: a writer runs \
                 `cohd authorize {}` again)",
                co.key(),
                co.local_key()
            )?;
        } else {
            writeln!(
                out,
                "writable:  false (not a writer of co-drive {}: a writer runs `cohd authorize {}`)",
                co.key(),
                co.local_key()
            )?;
        }
        writeln!(out, "version:   {}", drive.version())?;
        writeln!(
            out,
            "db core:   {} blocks, {}",
            db.length,
            output::size(db.byte_length)
        )?;
        writeln!(
            out,
            "blobs core: {}, {} blocks, {}",
            drive.blobs_key(),
            blobs.length,
            output::size(blobs.byte_length)
        )?;
        writeln!(out, "co-drive:  {}", co.key())?;
        match &frontier {
            Ok(f) => writeln!(out, "frontier:  {f}")?,
            Err(e) => writeln!(out, "frontier:  unknown ({e})")?,
        }
    }
    Ok(())
}

/// A file or link written at `target` where the co-drive shows a folder, or below a file,
/// would make a file/folder clash (which no export can write out): refused, as a file system
/// would. Clashes between writers who wrote apart still happen, and `cohd conflicts` shows
/// them.
pub(crate) async fn refuse_clash(co: &CoDrive, target: &str) -> Result<()> {
    clash_check(co, target, false).await
}

/// [`refuse_clash`] for a folder files are written into (an import's): it must not be a
/// file, nor lie below one.
pub(crate) async fn refuse_clash_folder(co: &CoDrive, folder: &str) -> Result<()> {
    clash_check(co, folder, true).await
}

async fn clash_check(co: &CoDrive, target: &str, folder: bool) -> Result<()> {
    let p = if folder {
        path::folder(target)
    } else {
        path::normalize(target)?
    };
    if p.is_empty() {
        return Ok(());
    }
    // A co-drive that does not read yet, or one we are not a writer of, leaves the write to
    // say what is wrong.
    let Ok(idx) = read_indexed(co).await else {
        return Ok(());
    };
    if !idx.writers().contains_key(&co.local_key()) {
        return Ok(());
    }
    if folder {
        if idx.entry(&p)?.is_some_and(|e| e.entry.blob.is_some()) {
            bail!("{p} is a file: it cannot hold a folder's files");
        }
    } else if idx.is_folder(&p)? {
        bail!("{p} is a folder: a file cannot take its place (`cohd ls {p}` lists it)");
    }
    // (A link above it is left as it was: export writes the folder and skips the link.)
    let mut a = path::parent(&p);
    while a != "/" {
        if idx.entry(a)?.is_some_and(|e| e.entry.blob.is_some()) {
            bail!("{a} is a file: it cannot hold {p}");
        }
        a = path::parent(a);
    }
    Ok(())
}

pub(crate) async fn put(
    co: &CoDrive,
    io: &mut Io,
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
    let Io { out, stdin } = io;
    let mut file;
    let (source, what): (&mut (dyn AsyncRead + Unpin + Send), String) = match local {
        Some(p) if p != Path::new("-") => {
            file = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("cannot read {}", p.display()))?;
            (&mut file, p.display().to_string())
        }
        _ => (&mut **stdin, "stdin".to_string()),
    };
    let from_stdin = !matches!(local, Some(p) if p != Path::new("-"));
    refuse_clash(co, path).await?;
    // The batch looks paths up in the index on disk: no full merge.
    let mut batch = co.batch().await?;
    let mut w = batch.writer(path, opts).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = source
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {what}"))?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n]).await?;
    }
    if from_stdin {
        out.confirm_input()
            .await
            .context("the client went away before the end of its input; nothing was written")?;
    }
    w.finish().await?;
    batch.flush().await?;
    Ok(())
}

pub(crate) async fn cat(
    co: &CoDrive,
    out: &mut Out,
    path: &str,
    at: Option<&str>,
    writer: Option<&str>,
) -> Result<()> {
    let snap = snapshot_at(co, at).await?;
    // With --writer: that writer's version of the path, read from its blob (no view needed).
    let chosen = match writer {
        None => None,
        Some(w) => {
            let versions = path_versions(&snap, path)?;
            let v = match pick_version(&versions, w) {
                Pick::One(v) => v,
                Pick::None => bail!(
                    "{} has no version by writer {w}; its versions: {}",
                    path::resolve(path),
                    versions_text(&versions, None)
                ),
                Pick::Ambiguous => bail!(
                    "writer {w} is ambiguous for {}: give more of the key ({})",
                    path::resolve(path),
                    versions_text(&versions, None)
                ),
                Pick::Invalid => bail!("--writer {w:?} is not a writer key or a hex prefix of one"),
            };
            let blob = match &v.entry {
                None => bail!("writer {} deleted {}", v.writer, path::resolve(path)),
                Some(e) => match (&e.blob, &e.linkname) {
                    (Some(b), _) => *b,
                    (None, l) => bail!(
                        "the version by {} is a symlink to {}",
                        v.writer,
                        l.as_deref().unwrap_or_default()
                    ),
                },
            };
            Some((v.writer, blob))
        }
    };
    let mut pos = 0;
    loop {
        let mut err = None;
        let sink = |chunk: &[u8]| {
            if err.is_none() {
                if let Err(e) = out.write_all(chunk) {
                    err = Some(e);
                }
            }
            Ok(())
        };
        let n = match &chosen {
            None => match snap.read_range(path, pos, CAT_PIECE, sink).await {
                Ok(n) => n,
                // Not a file: a folder is named as one (`no such file` misled).
                Err(e) if pos == 0 => {
                    let p = path::normalize(path)?;
                    if !snap.readdir(&p)?.is_empty() {
                        bail!("{p} is a folder: `cohd ls {p}` lists it");
                    }
                    // A link whose target is no file (gone, or a folder): said as such.
                    if let Some(l) = snap.entry(&p)?.and_then(|e| e.entry.linkname) {
                        bail!("{p} is a link to {l}, which is not a file here");
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            Some((w, blob)) => co.read_content(*w, blob, pos, CAT_PIECE, sink).await?,
        };
        if let Some(e) = err {
            return Err(e.into());
        }
        out.drain().await?;
        pos += n;
        if n < CAT_PIECE {
            return Ok(());
        }
    }
}

/// The versions of `name` to choose from: every concurrent version when it is conflicted,
/// else the one shown (a delete included). Fails if the view never had the path.
fn path_versions(snap: &Reader<'_>, name: &str) -> Result<Vec<PathVersion>> {
    let p = path::normalize(name)?;
    let Some(r) = snap.resolved(&p)? else {
        if !snap.readdir(&p)?.is_empty() {
            bail!("{p} is a folder: `cohd ls {p}` lists it");
        }
        bail!("no such file: {p}");
    };
    Ok(if r.conflicts.is_empty() {
        vec![r.winner.clone()]
    } else {
        r.conflicts.clone()
    })
}

/// The outcome of [`pick_version`].
#[derive(Debug)]
pub(crate) enum Pick<'v> {
    One(&'v PathVersion),
    /// No version by a writer with that key.
    None,
    /// Several writers' keys start with the prefix.
    Ambiguous,
    /// Neither a key nor a hex prefix.
    Invalid,
}

/// The version written by `writer`: a whole key (hex or z-base-32) or a hex prefix of one
/// (the 8 digits `cohd conflicts` shows are enough). A writer has at most one version among
/// concurrent ones (its own writes are ordered), so the writer names the version.
pub(crate) fn pick_version<'v>(versions: &'v [PathVersion], writer: &str) -> Pick<'v> {
    let w = writer.trim();
    if let Ok(k) = w.parse::<Key>() {
        return versions
            .iter()
            .find(|v| v.writer == k)
            .map_or(Pick::None, Pick::One);
    }
    if w.is_empty() || w.len() > 64 || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Pick::Invalid;
    }
    let w = w.to_ascii_lowercase();
    let mut found = versions
        .iter()
        .filter(|v| v.writer.to_hex().starts_with(&w));
    match (found.next(), found.next()) {
        (Some(v), None) => Pick::One(v),
        (None, _) => Pick::None,
        (Some(_), Some(_)) => Pick::Ambiguous,
    }
}

fn entry_json(e: &CoEntry) -> serde_json::Value {
    serde_json::json!({
        "path": e.path,
        "seq": e.seq,
        "size": e.entry.size(),
        "executable": e.entry.executable,
        "linkname": e.entry.linkname,
        "blob": e.entry.blob,
        "metadata": e.entry.metadata,
        "writer": e.writer.to_hex(),
        "time": e.time,
        "conflicts": versions_json(&e.conflicts, (e.writer, e.seq)),
    })
}

/// A version's time for people (`-` when it was recorded without one).
fn when(time: Option<u64>) -> String {
    time.map(crate::output::utc)
        .unwrap_or_else(|| "-".to_string())
}

fn long_line(e: &CoEntry) -> String {
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
    format!(
        "{kind}{x} {:>12} {:<20} {}{link}{}",
        e.entry.size(),
        when(e.time),
        e.path,
        conflict_mark(e)
    )
}

/// What `ls -l` adds to a conflicted path: how many versions, and how to see them.
fn conflict_mark(e: &CoEntry) -> String {
    if e.conflicts.is_empty() {
        return String::new();
    }
    format!(
        "  [conflict: {} versions: {}]",
        e.conflicts.len(),
        versions_text(&e.conflicts, Some((e.writer, e.seq)))
    )
}

pub(crate) async fn ls(
    co: &CoDrive,
    out: &mut Out,
    folder: &str,
    recursive: bool,
    long: bool,
    json: bool,
    at: Option<&str>,
) -> Result<()> {
    let snap = snapshot_at(co, at).await?;
    // The root always exists; anything else must be a file or hold one. A file (that is
    // not also a folder) is listed itself, as `ls FILE` does.
    if !folder.trim_matches('/').is_empty() {
        let norm = path::normalize(folder)?;
        let file = snap.entry(&norm)?;
        let empty = snap.readdir(&norm)?.is_empty();
        match file {
            None if empty => bail!("no such file or folder: {norm}"),
            Some(e) if empty => {
                if json {
                    writeln!(out, "{}", serde_json::Value::Array(vec![entry_json(&e)]))?;
                } else if long {
                    writeln!(out, "{}", long_line(&e))?;
                } else {
                    writeln!(out, "{}", e.path)?;
                }
                return Ok(());
            }
            _ => {}
        }
    }
    if json {
        let f = path::folder(folder);
        let mut v = Vec::new();
        snap.each_entry(folder, |e| {
            if recursive || !e.path[f.len() + 1..].contains('/') {
                v.push(entry_json(&e));
            }
            Ok(())
        })?;
        writeln!(out, "{}", serde_json::Value::Array(v))?;
    } else if recursive {
        // Streamed: memory stays bounded whatever the drive's size.
        snap.each_entry(folder, |e| {
            if long {
                writeln!(out, "{}", long_line(&e))?;
            } else {
                writeln!(out, "{}", e.path)?;
            }
            Ok(())
        })?;
    } else {
        // The folder's own entries, then its subfolders as `path/`.
        let names = snap.readdir(folder)?;
        if !long {
            for name in names {
                writeln!(out, "{}", join(folder, &name))?;
            }
            return Ok(());
        }
        // In `ls`'s order, a folder's line where its name sorts.
        for name in names {
            let p = join(folder, &name);
            match snap.entry(&p)? {
                // A file that is also a folder of other files (writers who wrote apart).
                Some(e) if !snap.readdir(&p)?.is_empty() => writeln!(
                    out,
                    "{}  [file/folder clash: also a folder; `cohd conflicts`]",
                    long_line(&e)
                )?,
                Some(e) => writeln!(out, "{}", long_line(&e))?,
                None => writeln!(out, "d- {:>12} {:<20} {p}/", "-", "-")?,
            }
        }
    }
    Ok(())
}

fn join(folder: &str, name: &str) -> String {
    format!("{}/{name}", path::folder(folder))
}

/// `rm` writes tombstones through the co-drive: the versions it saw disappear from the merged
/// view, whichever writer wrote them.
pub(crate) async fn rm(
    co: &CoDrive,
    out: &mut Out,
    target: &str,
    recursive: bool,
    yes: bool,
) -> Result<()> {
    let everything = recursive && target.trim_matches('/').is_empty();
    let mut n = 0;
    if everything {
        co.indexed().await?.for_each_entry("/", |_| {
            n += 1;
            Ok::<_, anyhow::Error>(())
        })?;
    }
    // The batch looks paths up in the index on disk: no full merge.
    let mut batch = co.batch().await?;
    // Emptying the whole shared drive takes every writer's files with it: asked first.
    if everything
        && !yes
        && !confirm(
            out,
            &format!("remove all {n} files of co-drive {}?", co.key()),
        )?
    {
        bail!("not removed: `rm -r /` empties the whole shared drive; add --yes to do it");
    }
    if recursive {
        if batch.del_folder(target).await? == 0 {
            bail!("no such file or folder: {target}");
        }
    } else if !batch.del(target).await? {
        drop(batch);
        if !co.indexed().await?.readdir(target)?.is_empty() {
            bail!("{target} is a folder (use rm -r)");
        }
        bail!("no such file: {target}");
    }
    batch.flush().await?;
    Ok(())
}

/// Asks on the terminal (only when this command runs in one, not inside a `serve`); `false`
/// without a terminal.
fn confirm(out: &Out, question: &str) -> Result<bool> {
    use std::io::IsTerminal;
    if out.is_remote() || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Each version as `cohd conflicts` and `ls -l` show them: who wrote it (the first 8 hex
/// digits of the writer's key, what `cat --writer` takes), how big it is and when it was
/// written; `winner` (writer, seq), if given, is marked as the one shown.
pub(crate) fn versions_text(versions: &[PathVersion], winner: Option<(Key, u64)>) -> String {
    versions
        .iter()
        .map(|c| {
            let what = match &c.entry {
                None => "deleted".to_string(),
                Some(e) => format!("{} B", e.size()),
            };
            format!(
                "by {} ({what}, {}{})",
                &c.writer.to_hex()[..8],
                when(c.time),
                if Some((c.writer, c.seq)) == winner {
                    ", shown"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The versions as `cohd conflicts --json` shows them; `winner` is the winning (writer, seq).
pub(crate) fn versions_json(versions: &[PathVersion], winner: (Key, u64)) -> serde_json::Value {
    versions
        .iter()
        .map(|c| {
            serde_json::json!({
                "writer": c.writer.to_hex(),
                "seq": c.seq,
                "time": c.time,
                "size": c.entry.as_ref().map(|e| e.size()),
                "deleted": c.entry.is_none(),
                "winner": (c.writer, c.seq) == winner,
            })
        })
        .collect()
}

pub(crate) async fn stat(
    co: &CoDrive,
    out: &mut Out,
    target: &str,
    json: bool,
    at: Option<&str>,
) -> Result<()> {
    let snap = snapshot_at(co, at).await?;
    let Some(e) = snap.entry(target)? else {
        if !snap.readdir(target)?.is_empty() {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "path": path::resolve(target), "directory": true })
                )?;
            } else {
                writeln!(out, "{}: directory", path::resolve(target))?;
            }
            return Ok(());
        }
        bail!("no such file: {target}");
    };
    if json {
        writeln!(out, "{}", entry_json(&e))?;
    } else {
        writeln!(out, "path:       {}", e.path)?;
        writeln!(
            out,
            "type:       {}",
            if e.entry.blob.is_none() {
                "symlink"
            } else {
                "file"
            }
        )?;
        writeln!(out, "size:       {}", e.entry.size())?;
        writeln!(out, "executable: {}", e.entry.executable)?;
        if let Some(l) = &e.entry.linkname {
            writeln!(out, "linkname:   {l}")?;
        }
        if let Some(b) = &e.entry.blob {
            writeln!(
                out,
                "blob:       blocks {}+{}, bytes {}+{}",
                b.block_offset, b.block_length, b.byte_offset, b.byte_length
            )?;
        }
        if let Some(m) = &e.entry.metadata {
            writeln!(out, "metadata:   {m}")?;
        }
        writeln!(out, "seq:        {}", e.seq)?;
        writeln!(out, "writer:     {}", e.writer)?;
        writeln!(out, "written:    {}", when(e.time))?;
        if !e.conflicts.is_empty() {
            writeln!(
                out,
                "conflicts:  {}",
                versions_text(&e.conflicts, Some((e.writer, e.seq)))
            )?;
        }
    }
    Ok(())
}
