//! Command implementations.

mod demo;
mod files;
mod history;
mod transfer;
mod writers;

use anyhow::{Context, Result};
use co_hyperdrive::format::Key;
use co_hyperdrive::{Drive, Store};

use crate::{Cli, Command};

/// The drive a command works on: the store's own, or `--drive KEY`.
pub(crate) async fn open_drive(cli: &Cli) -> Result<(Store, Drive)> {
    let store = Store::open(&cli.dir)?;
    let drive = match &cli.drive {
        None => Drive::open_own(&store, "db").await?,
        Some(k) => {
            let key: Key = k.parse()?;
            if key == store.named_key("db") {
                Drive::open_own(&store, "db").await?
            } else {
                Drive::open_key(&store, key)
                    .await
                    .with_context(|| format!("opening drive {key}"))?
            }
        }
    };
    Ok((store, drive))
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
        Command::Whoami
        | Command::Writers { .. }
        | Command::Authorize { .. }
        | Command::Deauthorize { .. }
        | Command::Conflicts { .. } => writers::run(&cli).await,
        _ => {
            let (_store, drive) = open_drive(&cli).await?;
            let r = dispatch(&cli.command, &drive).await;
            // Make whatever was written durable before exiting, even after an error.
            let synced = drive.sync();
            r?;
            Ok(synced?)
        }
    }
}

async fn dispatch(command: &Command, drive: &Drive) -> Result<()> {
    match command {
        Command::Info { json } => files::info(drive, *json).await,
        Command::Put {
            path,
            local,
            executable,
            metadata,
        } => {
            files::put(
                drive,
                path,
                local.as_deref(),
                *executable,
                metadata.as_deref(),
            )
            .await
        }
        Command::Cat { path } => files::cat(drive, path).await,
        Command::Ls {
            path,
            recursive,
            long,
            json,
        } => {
            files::ls(
                drive,
                path.as_deref().unwrap_or("/"),
                *recursive,
                *long,
                *json,
            )
            .await
        }
        Command::Rm { path, recursive } => files::rm(drive, path, *recursive).await,
        Command::Stat { path, json } => files::stat(drive, path, *json).await,
        Command::Symlink { path, target } => {
            drive.symlink(path, target).await?;
            Ok(())
        }
        Command::Import { local, path } => {
            transfer::import(drive, local, path.as_deref().unwrap_or("/")).await
        }
        Command::Export { args } => {
            let (from, to) = match args.as_slice() {
                [to] => ("/", to.as_str()),
                [from, to] => (from.as_str(), to.as_str()),
                _ => anyhow::bail!("export takes [DRIVE_DIR] LOCAL_DIR"),
            };
            transfer::export(drive, from, std::path::Path::new(to)).await
        }
        Command::Log { json } => history::log(drive, *json).await,
        Command::Diff {
            from,
            to,
            path,
            json,
        } => history::diff(drive, *from, *to, path, *json).await,
        _ => unreachable!("handled before opening a store"),
    }
}
