//! Command implementations.

mod demo;
mod files;
mod history;
mod net;
mod transfer;
mod writers;

use anyhow::{bail, Result};
use co_hyperdrive::codrive::{CoDrive, Snapshot};
use co_hyperdrive::format::Key;
use co_hyperdrive::{Drive, Store};

use crate::{Cli, Command};

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

pub(crate) async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init => {
            let store = Store::create(&cli.dir)?;
            let drive = Drive::open_own(&store, "db").await?;
            // Like every other command, make the new cores' files durable before reporting.
            drive.sync()?;
            println!("{}", drive.key());
            Ok(())
        }
        Command::Demo => demo::run().await,
        Command::Clone { key, all } => net::clone(&cli, key, *all).await,
        _ => {
            let (store, co) = open_codrive(&cli).await?;
            let r = match (&cli.command, cli.peer) {
                (Command::Serve { listen }, _) => net::serve(&store, &co, *listen).await,
                (Command::Sync { all }, peer) => net::sync(&store, &co, peer, *all).await,
                (command, Some(peer)) => {
                    net::with_peer(&store, &co, peer, dispatch(command, &co)).await
                }
                (command, None) => dispatch(command, &co).await,
            };
            // Make whatever was written or received durable before exiting, even after an error.
            let synced = store.close().await;
            r?;
            Ok(synced?)
        }
    }
}

async fn dispatch(command: &Command, co: &CoDrive) -> Result<()> {
    match command {
        Command::Info { json } => files::info(co, *json).await,
        Command::Put {
            path,
            local,
            executable,
            metadata,
        } => files::put(co, path, local.as_deref(), *executable, metadata.as_deref()).await,
        Command::Cat { path } => files::cat(co, path).await,
        Command::Ls {
            path,
            recursive,
            long,
            json,
        } => files::ls(co, path.as_deref().unwrap_or("/"), *recursive, *long, *json).await,
        Command::Rm { path, recursive } => files::rm(co, path, *recursive).await,
        Command::Stat { path, json } => files::stat(co, path, *json).await,
        Command::Symlink { path, target } => Ok(co.symlink(path, target).await?),
        Command::Import { local, path } => {
            transfer::import(co, local, path.as_deref().unwrap_or("/")).await
        }
        Command::Export { args } => {
            let (from, to) = match args.as_slice() {
                [to] => ("/", to.as_str()),
                [from, to] => (from.as_str(), to.as_str()),
                _ => bail!("export takes [DRIVE_DIR] LOCAL_DIR"),
            };
            transfer::export(co, from, std::path::Path::new(to)).await
        }
        Command::Log { json } => history::log(co.own(), *json).await,
        Command::Diff {
            from,
            to,
            path,
            json,
        } => history::diff(co.own(), *from, *to, path, *json).await,
        Command::Whoami
        | Command::Writers { .. }
        | Command::Authorize { .. }
        | Command::Deauthorize { .. }
        | Command::Conflicts { .. } => writers::run(command, co).await,
        Command::Init
        | Command::Demo
        | Command::Clone { .. }
        | Command::Serve { .. }
        | Command::Sync { .. } => {
            unreachable!("handled before dispatch")
        }
    }
}
