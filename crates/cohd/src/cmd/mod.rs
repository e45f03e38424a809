//! Command implementations.

mod demo;
mod files;
pub(crate) mod forward;
mod history;
mod net;
mod transfer;
mod writers;

pub(crate) use files::{pick_version, versions_json, Pick};
pub(crate) use transfer::conflict_name;

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Result};
use co_hyperdrive::format::Key;
use co_hyperdrive::{CoDrive, CoDriveError, Snapshot};
use co_hyperdrive::{CoreFormat, Drive, Store};
use tokio::io::AsyncRead;

use crate::output::Out;
use crate::{Cli, Command};

/// A command's standard streams: this process's, or those of the client that forwarded the
/// command to a running `cohd serve` (see [`forward`]).
pub(crate) struct Io {
    /// Stdout and stderr notes.
    pub(crate) out: Out,
    /// What `put` reads when it has no local file.
    pub(crate) stdin: Box<dyn AsyncRead + Unpin + Send>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").field("out", &self.out).finish()
    }
}

impl Io {
    /// This process's stdin, stdout and stderr.
    fn here() -> Self {
        Self {
            out: Out::stdout(),
            stdin: Box::new(tokio::io::stdin()),
        }
    }
}

/// The co-drive a command works on: the one named by `--drive KEY`, else the one the store
/// follows (recorded by `clone`), else the store's own (whose primary is this store's drive).
/// Either way the local writer is this store's drive.
async fn open_codrive(cli: &Cli) -> Result<(Store, CoDrive)> {
    let store = Store::open(&cli.dir)?;
    let co = match &cli.drive {
        Some(k) => CoDrive::open(&store, k.parse::<Key>()?, "db").await?,
        None => match net::followed(&cli.dir)? {
            Some(k) => CoDrive::open(&store, k, "db").await?,
            None => CoDrive::create(&store, "db").await?,
        },
    };
    Ok((store, co))
}

/// The merged view for a read: reading a co-drive whose primary drive the store does not hold
/// is an error (there would be nothing to show).
pub(crate) async fn read_snapshot(co: &CoDrive) -> Result<Snapshot<'_>> {
    let snap = co.snapshot().await?;
    if snap.missing().contains(&co.key()) {
        bail!("drive {} is not in this store", co.key());
    }
    Ok(snap)
}

/// Runs the command; returns the exit status. When another process holds the store and it is a
/// `cohd serve` that listens on the store's local socket, the command runs there instead.
pub(crate) async fn run(cli: Cli) -> Result<u8> {
    match run_here(&cli).await {
        Err(e) if forward::is_locked(&e) => forward::forward(&cli, e).await,
        r => r.map(|()| 0),
    }
}

async fn run_here(cli: &Cli) -> Result<()> {
    let mut io = Io::here();
    match &cli.command {
        Command::Init { compat } => {
            let store = Store::create(&cli.dir)?;
            let format = if *compat {
                CoreFormat::Compat
            } else {
                CoreFormat::Manifest
            };
            let drive = Drive::open_own_as(&store, "db", format).await?;
            // Like every other command, make the new cores' files durable before reporting.
            drive.sync()?;
            writeln!(io.out, "{}", drive.key())?;
        }
        Command::Demo => demo::run(&mut io.out).await?,
        Command::Clone { key, all } => net::clone(cli, key, *all).await?,
        _ => {
            let (store, co) = open_codrive(cli).await?;
            // Shared: `serve --http` answers browsers from tasks of their own.
            let co = Arc::new(co);
            let peers = &cli.peer;
            let dht = net::dht_options(cli);
            let r = match &cli.command {
                Command::Serve {
                    listen,
                    http,
                    allow_all,
                    allow,
                } => {
                    let policy = net::policy(*allow_all, allow)?;
                    net::serve(&store, &co, *listen, *http, peers, dht, policy).await
                }
                Command::RequestAuth { timeout } => {
                    net::request_auth(&store, &co, peers, dht, *timeout).await
                }
                Command::Sync { all } => net::sync(&store, &co, peers, dht, *all).await,
                Command::Connect { .. } => Err(anyhow::anyhow!(
                    "`cohd connect` needs a running `cohd serve` on the store at {} (it keeps \
                     the peer connected); start one, or use `cohd serve --peer ADDR`",
                    cli.dir.display()
                )),
                Command::Status { json } => {
                    net::status_offline(&store, &co, *json, &mut io.out).await
                }
                command if !peers.is_empty() => {
                    net::with_peer(&store, &co, peers, dispatch(command, &co, &mut io)).await
                }
                command => dispatch(command, &co, &mut io).await,
            };
            // Make whatever was written or received durable before exiting, even after an error.
            let synced = store.close().await;
            r?;
            synced?;
        }
    }
    io.out.drain().await?;
    Ok(())
}

/// Runs a command that works on an open co-drive (every command but init, demo, clone, serve
/// and sync), here or for a forwarding client. A refused write says why this store is not a
/// writer, as far as it knows, and what to do.
async fn dispatch(command: &Command, co: &CoDrive, io: &mut Io) -> Result<()> {
    match dispatch_here(command, co, io).await {
        Err(e)
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<CoDriveError>(),
                    Some(CoDriveError::NotAWriter(_))
                )
            }) =>
        {
            Err(not_a_writer(co).await)
        }
        r => r,
    }
}

/// Why this store's writes to `co` are refused: removed by a writer, or not (yet) authorized.
pub(crate) async fn not_a_writer(co: &CoDrive) -> anyhow::Error {
    let me = co.local_key();
    let removed = co
        .snapshot()
        .await
        .is_ok_and(|s| s.view().removed.contains_key(&me));
    if removed {
        anyhow::anyhow!(
            "this store's writer {me} was removed from co-drive {} by one of its writers: its \
             writes are refused (ask a writer to run `cohd authorize {me}` again)",
            co.key()
        )
    } else {
        anyhow::anyhow!(
            "not a writer of co-drive {key}: ask a writer to run `cohd authorize {me}` (if one \
             already did, this store has not received it yet: run `cohd --drive {key} sync \
             --peer ADDR`, or keep a `cohd serve` connected)",
            key = co.key()
        )
    }
}

async fn dispatch_here(command: &Command, co: &CoDrive, io: &mut Io) -> Result<()> {
    let out = &mut io.out;
    match command {
        Command::Info { json } => files::info(co, out, *json).await,
        Command::Put {
            path,
            local,
            executable,
            metadata,
        } => {
            let (local, metadata) = (local.as_deref(), metadata.as_deref());
            files::put(co, io, path, local, *executable, metadata).await
        }
        Command::Cat { path, at, writer } => {
            files::cat(co, out, path, at.as_deref(), writer.as_deref()).await
        }
        Command::Ls {
            path,
            recursive,
            long,
            json,
            at,
        } => {
            let folder = path.as_deref().unwrap_or("/");
            files::ls(co, out, folder, *recursive, *long, *json, at.as_deref()).await
        }
        Command::Rm {
            path,
            recursive,
            yes,
        } => files::rm(co, out, path, *recursive, *yes).await,
        Command::Stat { path, json, at } => files::stat(co, out, path, *json, at.as_deref()).await,
        Command::Symlink { path, target } => {
            files::refuse_clash(co, path).await?;
            Ok(co.symlink(path, target).await?)
        }
        Command::Import {
            local,
            path,
            delete,
        } => transfer::import(co, out, local, path.as_deref().unwrap_or("/"), *delete).await,
        Command::Export { args } => {
            let (from, to) = export_args(args)?;
            transfer::export(co, out, from, std::path::Path::new(to)).await
        }
        Command::Download { path } => {
            let path = path.as_deref().unwrap_or("/");
            let bar = crate::output::progress_blocks("download");
            let d = co
                .download_with(path, &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await;
            bar.finish_and_clear();
            let d = d?;
            writeln!(
                out,
                "{path}: {} files local, {} blocks downloaded",
                d.files, d.blocks
            )?;
            Ok(())
        }
        Command::Clear { path } => {
            let c = co.clear(path).await?;
            let n = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            writeln!(
                out,
                "{path}: cleared {} of {}{}",
                n(c.blocks as usize, "block", "blocks"),
                n(c.files, "file", "files"),
                if c.kept_own > 0 {
                    format!(
                        "; kept {} this store wrote (no peer may hold them)",
                        n(c.kept_own, "file", "files")
                    )
                } else {
                    String::new()
                }
            )?;
            Ok(())
        }
        Command::Log { json } => history::log(co.own(), out, *json).await,
        Command::Diff {
            from,
            to,
            path,
            json,
        } => history::diff(co.own(), out, *from, *to, path, *json).await,
        Command::Whoami
        | Command::Writers { .. }
        | Command::Authorize { .. }
        | Command::Deauthorize { .. }
        | Command::Conflicts { .. } => writers::run(command, co, out).await,
        Command::Init { .. }
        | Command::Demo
        | Command::Clone { .. }
        | Command::Serve { .. }
        | Command::Sync { .. }
        | Command::Connect { .. }
        | Command::Status { .. }
        | Command::RequestAuth { .. } => {
            unreachable!("handled before dispatch")
        }
    }
}

/// `export`'s drive folder and local folder (one argument: the local folder, from `/`).
fn export_args(args: &[String]) -> Result<(&str, &str)> {
    Ok(match args {
        [to] => ("/", to.as_str()),
        [from, to] => (from.as_str(), to.as_str()),
        _ => bail!("export takes [DRIVE_DIR] LOCAL_DIR"),
    })
}
