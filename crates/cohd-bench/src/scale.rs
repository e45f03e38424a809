//! `cohd-bench --scale`: whole-process `cohd` reads on big co-drives (10^4 and 10^5 files, 10^6
//! with `--huge`; 1 and 16 writers), beside the same reads by JavaScript Hyperdrive 13 on one
//! drive holding the same files (`js/bench/scale.js`), in the same run. Each read is its own
//! process, timed from start to exit, with its peak memory (`/usr/bin/time`). Targets (issue 11):
//! `stat` and `cat` of one file under 20 ms and 32 MiB at 10^6 files x 16 writers; `import` of a
//! local folder of 10^5 small files at least 3x faster than JavaScript's batched import (both
//! sides import the same folder, up to 10^5 files; ours also a second time, every file unchanged).
//!
//! The drives are built through the library's batch API (one batch per 10,000 files), not
//! imported. File `i` is `/dXXXXX/fIIIIIII.txt` (100 files a folder, so every folder holds files
//! of every writer) with content `file i\n`; writer `i % W` writes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use co_hyperdrive::{PutOptions, Store};
use serde_json::json;

const PER_FOLDER: usize = 100;
const BATCH: usize = 10_000;
/// Repetitions of each read; the median is reported.
const REPEAT: usize = 3;

fn file_path(i: usize) -> String {
    format!("/d{:05}/f{i:07}.txt", i / PER_FOLDER)
}

/// One measured read.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    side: &'static str,
    files: usize,
    writers: usize,
    op: String,
    ms: f64,
    peak_mib: f64,
}

/// Runs `cmd` under `/usr/bin/time`; returns its stdout, wall time (ms) and peak RSS (MiB).
fn measure(cmd: &mut Command) -> Result<(String, f64, f64)> {
    let rusage = tempfile::NamedTempFile::new()?;
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rusage.path())
        .arg(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = timed
        .output()
        .with_context(|| format!("running {program:?} under /usr/bin/time"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        out.status.success(),
        "{program:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kib: f64 = std::fs::read_to_string(rusage.path())?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("no peak memory from /usr/bin/time")?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        ms,
        kib / 1024.0,
    ))
}

/// The median of `REPEAT` runs of `cmd` (by time; memory of the same run), and its output.
fn median(mut cmd: impl FnMut() -> Command) -> Result<(String, f64, f64)> {
    let mut runs = Vec::new();
    for _ in 0..REPEAT {
        runs.push(measure(&mut cmd())?);
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(runs.swap_remove(REPEAT / 2))
}

/// Builds a co-drive of `n` files written by `writers` writers in a new store at `dir`: the
/// primary is the store's drive `db` (the one `cohd --dir` opens), the others `wNN`.
async fn build(dir: &Path, n: usize, writers: usize) -> Result<()> {
    let store = Store::create(dir)?;
    let (primary, all) = crate::codrive::writers_of(&store, "db", writers).await?;
    for (w, co) in std::iter::once(&primary).chain(all.iter()).enumerate() {
        let mine: Vec<usize> = (w..n).step_by(writers).collect();
        for chunk in mine.chunks(BATCH) {
            let mut snap = co.snapshot().await?;
            let mut b = snap.batch().await?;
            for &i in chunk {
                b.put(
                    &file_path(i),
                    format!("file {i}\n").as_bytes(),
                    PutOptions::default(),
                )
                .await?;
            }
            b.flush().await?;
        }
        co.own().sync()?;
    }
    store.flush()?;
    store.close().await?;
    Ok(())
}

/// Imports of a local folder are measured up to this many files (issue 11: up to 10^5).
const IMPORT_MAX: usize = 100_000;

/// The local folder both sides import: `n` files laid out as the built drives are.
fn local_folder(n: usize) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-import-")
        .tempdir()
        .context("temp dir")?;
    for i in 0..n {
        let p = dir.path().join(&file_path(i)[1..]);
        if i % PER_FOLDER == 0 {
            std::fs::create_dir_all(p.parent().context("a file path has a folder")?)?;
        }
        std::fs::write(&p, format!("file {i}\n"))?;
    }
    Ok(dir)
}

/// `cohd import` of `local` (`n` files) into a new store, then the same import again (every
/// file unchanged); rows for both.
fn import_rows(cohd: &Path, local: &Path, n: usize) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-imported-")
        .tempdir()
        .context("temp dir")?;
    let cmd = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(cohd);
        c.arg("--dir").arg(dir.path()).args(args);
        c.env_remove("COHD_DIR").env("RUST_LOG", "error");
        c
    };
    measure(&mut cmd(&["init".as_ref()]))?;
    let import = [std::ffi::OsStr::new("import"), local.as_os_str()];
    let (_, ms, peak) = measure(&mut cmd(&import))?;
    let (out, _, _) = measure(&mut cmd(&["ls".as_ref(), "-r".as_ref(), "/".as_ref()]))?;
    ensure!(
        out.lines().count() == n,
        "import: the drive lists {} of {n} files",
        out.lines().count()
    );
    let (_, again_ms, again_peak) = measure(&mut cmd(&import))?;
    Ok(vec![
        Row {
            side: "rust",
            files: n,
            writers: 1,
            op: "import".into(),
            ms,
            peak_mib: peak,
        },
        Row {
            side: "rust",
            files: n,
            writers: 1,
            op: "import unchanged".into(),
            ms: again_ms,
            peak_mib: again_peak,
        },
    ])
}

fn cohd_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("cohd");
    if !bin.exists() {
        bail!(
            "{} not found: build it beside cohd-bench (cargo build --release -p cohd -p cohd-bench)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The reads of one drive: (name, arguments after the command, check of the output).
fn reads(n: usize) -> Vec<(&'static str, Vec<String>, String)> {
    let i = n / 2 + 7;
    let p = file_path(i);
    let folder = format!("/d{:05}", i / PER_FOLDER);
    vec![
        ("stat", vec!["stat".into(), p.clone()], String::new()),
        ("cat", vec!["cat".into(), p], format!("file {i}")),
        ("ls FOLDER", vec!["ls".into(), folder], String::new()),
        (
            "ls -r",
            vec!["ls".into(), "-r".into(), "/".into()],
            String::new(),
        ),
    ]
}

async fn rust_rows(cohd: &Path, n: usize, writers: usize, keep: Option<&Path>) -> Result<Vec<Row>> {
    let temp;
    let (dir, reuse) = match keep {
        Some(root) => {
            let dir = root.join(format!("rust-{n}x{writers}"));
            // A drive is reused only once its build finished (the marker is written last).
            let done = dir.join("built");
            if !done.exists() && dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            (dir, done.exists())
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("cohd-bench-scale-")
                .tempdir()
                .context("temp dir")?;
            (temp.path().to_path_buf(), false)
        }
    };
    let build_ms = if reuse {
        eprintln!("reusing {}", dir.display());
        f64::NAN
    } else {
        eprintln!("building {n} files, {writers} writer(s) ...");
        let t = Instant::now();
        build(&dir, n, writers).await?;
        if keep.is_some() {
            std::fs::write(dir.join("built"), b"")?;
        }
        t.elapsed().as_secs_f64() * 1e3
    };
    let mut rows = vec![Row {
        side: "rust",
        files: n,
        writers,
        op: "build (batches)".into(),
        ms: build_ms,
        peak_mib: 0.0,
    }];
    let cmd = |args: &[String]| {
        let mut c = Command::new(cohd);
        c.arg("--dir").arg(&dir).args(args);
        // Keep the command offline and quiet.
        c.env_remove("COHD_DIR").env("RUST_LOG", "error");
        c
    };
    // The first read after the build: what a command costs on a drive it has not read yet.
    let first = reads(n).swap_remove(0).1;
    let (_, ms, peak) = measure(&mut cmd(&first))?;
    rows.push(Row {
        side: "rust",
        files: n,
        writers,
        op: "first stat".into(),
        ms,
        peak_mib: peak,
    });
    // The floor every command pays: start, open the store and the co-drive, no read.
    let (_, ms, peak) = median(|| cmd(&["whoami".to_string()]))?;
    rows.push(Row {
        side: "rust",
        files: n,
        writers,
        op: "open only (whoami)".into(),
        ms,
        peak_mib: peak,
    });
    for (op, args, expect) in reads(n) {
        eprintln!("  cohd {}", args.join(" "));
        let (out, ms, peak) = median(|| cmd(&args))?;
        if !expect.is_empty() {
            ensure!(
                out.trim_end() == expect,
                "{op}: got {out:?}, expected {expect:?}"
            );
        }
        if op == "ls -r" {
            ensure!(
                out.lines().count() == n,
                "ls -r listed {} of {n} files",
                out.lines().count()
            );
        }
        rows.push(Row {
            side: "rust",
            files: n,
            writers,
            op: op.into(),
            ms,
            peak_mib: peak,
        });
    }
    Ok(rows)
}

async fn js_rows(root: &Path, n: usize, local: Option<&Path>) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("cohd-bench-scale-js-")
        .tempdir()
        .context("temp dir")?;
    let script = root.join("js/bench/scale.js");
    let node = |args: &[&str]| {
        let mut c = Command::new("node");
        c.arg(&script)
            .arg(args[0])
            .arg("--dir")
            .arg(dir.path())
            .args(&args[1..]);
        c
    };
    eprintln!("building {n} files in JavaScript ...");
    let (_, build_ms, build_peak) = measure(&mut node(&["build", "--files", &n.to_string()]))?;
    let mut rows = vec![Row {
        side: "js",
        files: n,
        writers: 1,
        op: "build (batches)".into(),
        ms: build_ms,
        peak_mib: build_peak,
    }];
    if let Some(local) = local {
        let into = tempfile::Builder::new()
            .prefix("cohd-bench-imported-js-")
            .tempdir()
            .context("temp dir")?;
        let mut c = Command::new("node");
        c.arg(&script)
            .arg("import")
            .arg("--dir")
            .arg(into.path())
            .arg("--from")
            .arg(local);
        let (out, ms, peak) = measure(&mut c)?;
        ensure!(out.trim() == n.to_string(), "js import: {out:?}");
        rows.push(Row {
            side: "js",
            files: n,
            writers: 1,
            op: "import".into(),
            ms,
            peak_mib: peak,
        });
    }
    let i = n / 2 + 7;
    let p = file_path(i);
    let folder = format!("/d{:05}", i / PER_FOLDER);
    for (op, args) in [
        ("stat", vec!["stat", "--path", &p]),
        ("cat", vec!["cat", "--path", &p]),
        ("ls FOLDER", vec!["ls", "--path", &folder]),
        ("ls -r", vec!["ls-r"]),
    ] {
        eprintln!("  node scale.js {}", args.join(" "));
        let (out, ms, peak) = median(|| node(&args))?;
        match op {
            "cat" => ensure!(out.trim_end() == format!("file {i}"), "js cat: {out:?}"),
            "ls -r" => ensure!(out.trim() == n.to_string(), "js ls -r: {out:?}"),
            _ => {}
        }
        rows.push(Row {
            side: "js",
            files: n,
            writers: 1,
            op: op.into(),
            ms,
            peak_mib: peak,
        });
    }
    Ok(rows)
}

/// Which drives to build.
pub(crate) struct Sizes {
    /// Add 10^6 files to the default sizes.
    pub(crate) huge: bool,
    /// These sizes instead (if any).
    pub(crate) files: Vec<usize>,
    /// These writer counts instead of 1 and 16 (if any).
    pub(crate) writers: Vec<usize>,
    /// Build the drives under this folder (one subfolder per size) and reuse them when there.
    pub(crate) keep: Option<PathBuf>,
}

pub(crate) async fn run(root: &Path, js: bool, json: bool, sizes: &Sizes) -> Result<()> {
    let cohd = cohd_bin()?;
    let mut files = vec![10_000, 100_000];
    if sizes.huge {
        files.push(1_000_000);
    }
    if !sizes.files.is_empty() {
        files = sizes.files.clone();
    }
    let writer_counts = if sizes.writers.is_empty() {
        vec![1, 16]
    } else {
        sizes.writers.clone()
    };
    let mut rows = Vec::new();
    for &n in &files {
        for &writers in &writer_counts {
            rows.extend(rust_rows(&cohd, n, writers, sizes.keep.as_deref()).await?);
        }
        let local = if n <= IMPORT_MAX {
            eprintln!("writing a local folder of {n} files to import ...");
            let local = local_folder(n)?;
            rows.extend(import_rows(&cohd, local.path(), n)?);
            Some(local)
        } else {
            None
        };
        if js {
            rows.extend(js_rows(root, n, local.as_ref().map(|l| l.path())).await?);
        }
    }
    if !json {
        println!(
            "{:<5} {:>9} {:>7}  {:<20} {:>10} {:>9}",
            "side", "files", "writers", "op", "ms", "peak MiB"
        );
        for r in &rows {
            println!(
                "{:<5} {:>9} {:>7}  {:<20} {:>10.1} {:>9.1}",
                r.side, r.files, r.writers, r.op, r.ms, r.peak_mib
            );
        }
    }
    println!("{}", json!({ "scale": rows }));
    Ok(())
}
