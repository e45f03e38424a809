//! `cohd`: the co-hyperdrive command-line tool.
//!
//! One store per `--dir` (default `./.cohd`). File commands work on the merged view of a
//! co-drive (the store's own, or `--drive KEY`) and write to the store's own drive as the local
//! writer. Errors print one line on stderr and exit 1.

mod cmd;
mod http;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cohd",
    version,
    about = "A multi-writer Hyperdrive (co-hyperdrive) command-line tool",
    after_long_help = "A co-drive is named by its primary writer's drive key; the store's own \
        co-drive is the one whose primary is this store's drive. Writes always go to this \
        store's drive, as the local writer, which must be one of the co-drive's writers (`cohd \
        whoami` prints its key, a writer runs `cohd authorize KEY`). Without --peer, clone, \
        sync and request-auth find peers on the HyperDHT by the co-drive's topic, and `serve` \
        announces it there.\n\nExit status: 0 on success, 1 on an error (one line on stderr), \
        2 on a usage error."
)]
struct Cli {
    // The options every command takes get one line of help each, under a heading of their
    // own, so a subcommand's help leads with what is its own (the details: `cohd --help`).
    /// Store directory.
    #[arg(
        long,
        global = true,
        default_value = ".cohd",
        env = "COHD_DIR",
        help_heading = "Global options"
    )]
    dir: PathBuf,
    /// Work on co-drive KEY (its primary writer's drive key) instead of the store's own.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        help_heading = "Global options"
    )]
    drive: Option<String>,
    /// Replicate with the peer at HOST:PORT first (repeatable; `serve` keeps it connected).
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        help_heading = "Global options"
    )]
    peer: Vec<String>,
    /// HyperDHT bootstrap nodes to find peers with (a private DHT; see --public-dht).
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        env = "COHD_BOOTSTRAP",
        help_heading = "Global options"
    )]
    bootstrap: Vec<String>,
    /// Do not use the HyperDHT: peers only from --peer (and those `serve` remembers).
    #[arg(
        long,
        global = true,
        env = "COHD_NO_DHT",
        value_parser = clap::builder::FalseyValueParser::new(),
        help_heading = "Global options"
    )]
    no_dht: bool,
    // Opt-in: peeroxide 1.7.3 does not yet bound what a hostile DHT node's reply makes it
    // allocate (docs/dht-notes.md, defect 2).
    /// Find peers on the public HyperDHT (opt-in; see the README)
    #[arg(
        long,
        global = true,
        env = "COHD_PUBLIC_DHT",
        value_parser = clap::builder::FalseyValueParser::new(),
        help_heading = "Global options"
    )]
    public_dht: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a store and its drive; prints the drive key.
    ///
    /// The drive is made as JavaScript Hyperdrive 13 makes one by default (manifest cores);
    /// `--compat` makes compat cores instead, which Hyperdrive 11 peers (Hypercore 10) can read.
    Init {
        /// Compat cores (key = Ed25519 public key), for Hypercore 10 peers.
        #[arg(long)]
        compat: bool,
    },
    /// Show this store's own drive (not the merged view): key, version, core lengths.
    ///
    /// This is the local writer's drive, whatever `--drive` names; the output also gives the
    /// co-drive's key (`codrive`) and the local writer key (`local_writer`) with `--json`, and
    /// the co-drive's version (`frontier`: every writer's length, for `ls`/`cat`/`stat --at`).
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a file to the co-drive from LOCAL_FILE, or stdin when it is `-` or absent.
    ///
    /// The local writer must be a writer: a writer runs `cohd authorize KEY` with the key
    /// `cohd whoami` prints here.
    Put {
        /// Path in the drive.
        path: String,
        /// Local file (default: stdin).
        local: Option<PathBuf>,
        /// Set the executable bit.
        #[arg(long)]
        executable: bool,
        /// JSON metadata to store with the entry.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Print a file's bytes (the winning version in the merged view) to stdout.
    ///
    /// A conflicted path has one version per writer that wrote it concurrently (`cohd
    /// conflicts` lists them by WRITER8, the first 8 hex digits of the writer's key);
    /// `--writer` prints the one that writer wrote.
    Cat {
        /// Path in the drive.
        path: String,
        /// Read the co-drive as it was at this version: a `frontier` from `cohd info --json`,
        /// or a UTC time as `ls -l` shows it (2026-12-06T10:00:00Z: to the end of that second;
        /// .123Z names a millisecond; a date means its end),
        /// by the writers' own clocks.
        #[arg(long, value_name = "FRONTIER|TIME")]
        at: Option<String>,
        /// Print this writer's version of a conflicted path instead of the winner: its key, or
        /// a unique hex prefix of it (the 8 digits `cohd conflicts` shows).
        #[arg(long, value_name = "KEY")]
        writer: Option<String>,
    },
    /// List a folder of the merged view (one normalized path per line, sorted).
    Ls {
        /// Folder (default `/`).
        path: Option<String>,
        /// Recurse into subfolders.
        #[arg(short, long)]
        recursive: bool,
        /// Long format: flags, size, write time and path; a conflicted path ends in
        /// `[conflict: N versions: by WRITER8 (SIZE, TIME), ...]`.
        #[arg(short, long)]
        long: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Read the co-drive as it was at this version: a `frontier` from `cohd info --json`,
        /// or a UTC time as `ls -l` shows it (2026-12-06T10:00:00Z: to the end of that second;
        /// .123Z names a millisecond; a date means its end),
        /// by the writers' own clocks.
        #[arg(long, value_name = "FRONTIER|TIME")]
        at: Option<String>,
    },
    /// Delete a file from the co-drive (or, with -r, everything under a folder).
    ///
    /// Whoever wrote it: the versions seen so far disappear from the merged view.
    Rm {
        /// Path in the drive.
        path: String,
        /// Delete a folder recursively.
        #[arg(short, long)]
        recursive: bool,
        /// Do not ask before emptying the whole drive (`rm -r /`), for scripts.
        #[arg(long)]
        yes: bool,
    },
    /// Show a file's entry in the merged view, with the winning writer and any conflicts.
    Stat {
        /// Path in the drive.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Read the co-drive as it was at this version: a `frontier` from `cohd info --json`,
        /// or a UTC time as `ls -l` shows it (2026-12-06T10:00:00Z: to the end of that second;
        /// .123Z names a millisecond; a date means its end),
        /// by the writers' own clocks.
        #[arg(long, value_name = "FRONTIER|TIME")]
        at: Option<String>,
    },
    /// Copy a local folder into the co-drive.
    ///
    /// Files the drive already holds unchanged are not written again; symlinks that stay inside
    /// the folder become drive symlinks, others are skipped with a warning.
    Import {
        /// Local folder.
        local: PathBuf,
        /// Drive folder (default `/`).
        path: Option<String>,
        /// Then delete the drive files under the drive folder that the local folder lacks.
        #[arg(long)]
        delete: bool,
    },
    /// Copy a folder of the merged view to a local folder.
    ///
    /// A conflicted file is written as its winning version, and each other writer's version
    /// beside it as `NAME.conflict-WRITER8.EXT` (WRITER8: the first 8 hex digits of the
    /// writer's key), so no concurrent edit is lost.
    Export {
        /// Drive folder, then local folder; with one argument it is the local folder.
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Create a symlink PATH -> TARGET in the co-drive.
    Symlink {
        /// Path of the link.
        path: String,
        /// Target it points to.
        target: String,
    },
    /// Show the history of this store's own drive (not the merged view), one line per write.
    ///
    /// Only the local writer's writes, with the versions of its drive they made.
    Log {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show what changed in this store's own drive (not the merged view) between versions.
    ///
    /// Only the local writer's writes; FROM and TO are versions of its drive (see `cohd log`).
    Diff {
        /// Older version.
        from: u64,
        /// Newer version (default: current).
        to: Option<u64>,
        /// Only this file, or what lies under this folder.
        #[arg(long, default_value = "/")]
        path: String,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demo in a temporary store.
    Demo,
    /// Serve the store's co-drive to peers over TCP, and on the HyperDHT under the co-drive's
    /// topic (unless --no-dht), until stopped (Ctrl-C), keeping every --peer and every peer it
    /// ever reached connected.
    Serve {
        /// Address to listen on (default: the one this store served on last, else 127.0.0.1
        /// with a port chosen now and kept for next time).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Also serve the merged co-drive to web browsers on ADDR (e.g. 127.0.0.1:8080),
        /// read-only: folder listings (HTML, or JSON with `Accept: application/json`), files
        /// with range requests and ETags, `?at=FRONTIER` for a past version and
        /// `?writer=KEY` for one writer's version of a conflicted path.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Grant every authorization request (default: deny all).
        #[arg(long)]
        allow_all: bool,
        /// Grant authorization requests for these writer keys.
        #[arg(long, num_args = 1..)]
        allow: Vec<String>,
    },
    /// Ask the writers connected through --peer (default: found on the DHT) to make this
    /// store's drive a writer.
    RequestAuth {
        /// Seconds to wait for a decision.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Follow the co-drive KEY: create the store if needed and download it from --peer
    /// (default: from the peers found on the DHT).
    Clone {
        /// Co-drive key (64 hex or z-base-32).
        key: String,
        /// Download every file's content (else metadata only; content is fetched on demand).
        #[arg(long)]
        all: bool,
    },
    /// Fetch the content of every file under PATH (default `/`, everything; a file works too)
    /// from --peer, or from the peers a running `cohd serve` is connected to, so that it reads
    /// offline.
    Download {
        /// Folder or file in the drive.
        path: Option<String>,
    },
    /// Drop the local copies of the content under PATH (a file or folder; `/` for all) that
    /// other writers wrote, to free space: it is fetched again when read with a peer
    /// connected (a mirror, made with `--all`, fetches it again on its next sync or serve).
    /// This store's own content is kept (no peer may hold it).
    Clear {
        /// Folder or file in the drive.
        path: String,
    },
    /// Keep the peer at HOST:PORT connected from now on (needs a running `cohd serve`, which
    /// remembers it).
    Connect {
        /// The peer's address.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
    },
    /// Show the running `cohd serve`: peers, how far each writer lags behind them, transfers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Catch up with --peer, then exit (with a running `cohd serve`: through it).
    Sync {
        /// Download every file's content too.
        #[arg(long)]
        all: bool,
    },
    /// Print the local writer key (what a writer authorizes).
    Whoami,
    /// List the co-drive's writers.
    Writers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make KEY a writer of the co-drive.
    Authorize {
        /// Writer key (64 hex or z-base-32).
        key: String,
    },
    /// Remove writer KEY (its writes seen so far stay).
    Deauthorize {
        /// Writer key (64 hex or z-base-32).
        key: String,
    },
    /// List paths with concurrent versions.
    ///
    /// Each version shows who wrote it (WRITER8: the writer key's first 8 hex digits), its size
    /// and when it was written; `cohd cat PATH --writer WRITER8` prints one, `cohd export`
    /// writes them all.
    Conflicts {
        /// Only under this folder.
        path: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The last panic's message and location, recorded by [`quiet_panics`].
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Replaces the default panic hook (a multi-line report on stderr) with one that only records
/// the message. The library turns panics inside the hypercore crate on corrupted files into
/// errors, and any other panic is caught in [`main`]; either way the user sees the promised
/// single `error:` line.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown panic");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_panics();
    // Diagnostics on stderr: `COHD_LOG=info` (or debug, or any tracing filter). By default only
    // our own warnings (and, for `serve`, connection logs); hypercore's `instrument(err)` logs
    // stay off, since our one-line errors already say what failed.
    let default = if matches!(cli.command, Command::Serve { .. }) {
        "co_hyperdrive=info"
    } else {
        "co_hyperdrive=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COHD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(cmd::run(cli))));
    let result = match result {
        Ok(r) => r,
        Err(_) => {
            let msg = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
            let msg = msg
                .unwrap_or_else(|| "unknown panic".into())
                .replace('\n', " ");
            eprintln!("error: internal error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
