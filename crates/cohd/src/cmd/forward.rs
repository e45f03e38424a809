//! Commands on a served store: while `cohd serve` runs, it holds the store, and every other
//! `cohd` command on that store runs inside the server, sent over a local socket.
//!
//! The server listens on `DIR/cohd.sock` (a Unix stream socket, mode 0600) once it serves
//! peers. A command that finds the store locked connects there and forwards itself; the server
//! runs it against its open store and co-drive, so its writes go through the same in-memory
//! cores as replication and reach connected peers live, and only one process ever writes the
//! store. Forwarded commands run concurrently (up to 64 at once; more wait to be accepted), next
//! to the server's own upkeep: a command waiting on its client (stdin still open, or a client
//! slow to read) holds up no other. Writes to the co-drive still take turns on the local
//! writer's drive: a `put` holds it while it streams its stdin into the drive, so another write
//! waits for that input to end, while reads go on. If the socket is missing or refuses the
//! connection (another kind of process holds the store, or a server was killed and left a
//! stale socket behind), the command fails as before: the store is in use.
//!
//! Every other failure to reach or hear the server is an error (exit status 1), never taken for
//! a closed stdout: a server that accepts no connection within 5 s, a request too large to
//! send, a connection lost or closed before the exit status, or silence from the server for
//! longer than the client's timeout. That timeout is 30 s, or `COHD_SOCKET_TIMEOUT_MS`
//! milliseconds when that variable is set (for tests and slow machines).
//!
//! # Protocol
//!
//! One command per connection.
//!
//! 1. The client sends one JSON line (at most 1 MiB, within 10 seconds of connecting):
//!    `{"args":[...],"cwd":"...","stdin":bool}`: its arguments without the program name, its
//!    current directory (absolute; relative local paths are resolved against it), and whether
//!    the command reads stdin (`put` without a local file, or with `-`). A client refuses to
//!    send a longer line; a server answers one with an error.
//! 2. When `stdin` is true, the client then sends its raw stdin bytes and half-closes (shuts
//!    down its write side) at their end; otherwise it half-closes after the line. A client that
//!    goes away mid-input (rather than half-closing) makes the command fail, writing nothing.
//!    The server streams the input into the drive as it arrives.
//! 3. The server answers with frames: a 1-byte tag, a u32 little-endian payload length, the
//!    payload. Tag 1: stdout bytes (possibly empty: the server checks that way that the client
//!    is still there, and sends an empty one at least every 5 s while a command runs, as a
//!    keepalive; sooner, a third of its own timeout, when `COHD_SOCKET_TIMEOUT_MS` is small).
//!    Tag 2: stderr text (a summary line, or the `error: ...` line). Tag 3: the exit status (a
//!    1-byte payload: 0 success, 1 error), always the last frame.
//!
//! The server rejects `init`, `serve`, `clone`, `sync`, `demo` and `--peer` (it is already
//! serving and replicating with whoever connects to it). Progress bars are not shown for
//! forwarded commands.

use co_hyperdrive::StoreError;

/// The socket's file name in the store directory.
pub(crate) const SOCKET: &str = "cohd.sock";

/// Frame tag: stdout bytes.
pub(crate) const TAG_STDOUT: u8 = 1;
/// Frame tag: stderr text.
pub(crate) const TAG_STDERR: u8 = 2;
/// Frame tag: exit status.
pub(crate) const TAG_EXIT: u8 = 3;

/// The server splits stdout into frames of at most this many bytes.
const MAX_FRAME: usize = 1 << 20;
/// The client accepts frames up to this size.
#[cfg(unix)]
const MAX_CLIENT_FRAME: usize = 16 << 20;
/// The longest request line, its newline included.
#[cfg(unix)]
const MAX_REQUEST: u64 = 1 << 20;
/// How long a client waits in silence for the server, unless `COHD_SOCKET_TIMEOUT_MS` says.
#[cfg(unix)]
const SOCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a server stays silent while a command runs (keepalives).
#[cfg(unix)]
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// The client's timeout: `COHD_SOCKET_TIMEOUT_MS` when set to a positive number of milliseconds,
/// else [`SOCKET_TIMEOUT`].
#[cfg(unix)]
fn socket_timeout() -> std::time::Duration {
    std::env::var("COHD_SOCKET_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(SOCKET_TIMEOUT, std::time::Duration::from_millis)
}

/// How often the server sends a keepalive: well within a client's timeout, assuming the
/// client's timeout is at least the server's own.
#[cfg(unix)]
fn keepalive_every() -> std::time::Duration {
    (socket_timeout() / 3).clamp(std::time::Duration::from_millis(10), KEEPALIVE)
}

/// Appends `payload` as frames with `tag`: one frame, or several of at most [`MAX_FRAME`] bytes.
pub(crate) fn push_frame(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        buf.push(tag);
        buf.extend_from_slice(&(n as u32).to_le_bytes());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if rest.is_empty() {
            return;
        }
    }
}

/// Whether opening the store failed because another process holds it.
pub(crate) fn is_locked(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Locked(_))))
}

/// What a running `serve` does itself for forwarded commands that need its connections
/// (`connect`, `status`, `sync`); forwarding knows it only through this.
pub(crate) trait ServedCommands: Sync {
    /// Runs `cli`'s command if it is one of the serve's own; `None` for every other.
    fn run<'a>(
        &'a self,
        cli: &'a crate::Cli,
        store: &'a co_hyperdrive::Store,
        co: &'a co_hyperdrive::CoDrive,
        out: &'a mut crate::output::Out,
    ) -> Option<futures::future::BoxFuture<'a, anyhow::Result<()>>>;
}

/// The socket of the store at `dir`.
#[cfg(unix)]
fn socket_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(SOCKET)
}

#[cfg(unix)]
pub(crate) use unix::{forward, run_server, LocalServer};

#[cfg(not(unix))]
pub(crate) use other::{forward, run_server, LocalServer};

#[cfg(unix)]
mod unix {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use anyhow::{anyhow, bail, Context, Result};
    use clap::{CommandFactory, FromArgMatches};
    use co_hyperdrive::format::Key;
    use co_hyperdrive::CoDrive;
    use co_hyperdrive::Store;
    use futures::stream::{FuturesUnordered, StreamExt};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    use super::ServedCommands;
    use super::{
        keepalive_every, push_frame, socket_path, socket_timeout, MAX_CLIENT_FRAME, MAX_REQUEST,
        TAG_EXIT, TAG_STDERR, TAG_STDOUT,
    };
    use crate::cmd::{dispatch, Io};
    use crate::output::{self, Link, Out};
    use crate::{Cli, Command};

    /// How long a client waits for the server to accept its connection.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long the server waits for a request line.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// The most forwarded commands a server runs at once; more connections wait in the
    /// listener's backlog until one finishes.
    const MAX_RUNNING: usize = 64;

    // -----------------------------------------------------------------------------------------
    // Client

    /// Whether the command reads stdin.
    fn reads_stdin(command: &Command) -> bool {
        matches!(command, Command::Put { local, .. }
            if local.as_deref().is_none_or(|l| l == Path::new("-")))
    }

    /// Who the client talks to, in its errors.
    const SERVER: &str = "the `cohd serve` that holds the store";

    /// A failure to talk to the server, as a plain message: an `io::Error` in the chain could be
    /// a broken pipe, which `main` would take for our own stdout closing and exit quietly with 0.
    /// `unsent` is the error that cut the request short, if one did: when the server did not
    /// answer after all, that is the cause to report.
    fn lost(e: &std::io::Error, unsent: Option<&std::io::Error>, wait: Duration) -> anyhow::Error {
        use std::io::ErrorKind;
        if let Some(u) = unsent {
            return anyhow!("cannot send the command to {SERVER}: {u}");
        }
        match e.kind() {
            ErrorKind::UnexpectedEof => anyhow!("{SERVER} stopped before the command finished"),
            // A read timeout shows as WouldBlock on Unix.
            ErrorKind::WouldBlock | ErrorKind::TimedOut => anyhow!(
                "no answer from {SERVER} for {} ms (see COHD_SOCKET_TIMEOUT_MS)",
                wait.as_millis()
            ),
            _ => anyhow!("lost the connection to {SERVER}: {e}"),
        }
    }

    /// Runs the command in the `cohd serve` that holds the store, if it listens on the store's
    /// socket; else fails with `locked` (the error opening the store gave). Returns the exit
    /// status the server reported.
    pub(crate) async fn forward(cli: &Cli, locked: anyhow::Error) -> Result<u8> {
        let path = socket_path(&cli.dir);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path)).await {
            Ok(Ok(s)) => s,
            // No socket, or nobody listening on it: not a server's store.
            Ok(Err(_)) => return Err(locked),
            Err(_) => bail!(
                "{SERVER} accepts no connection on {} (waited {} s)",
                path.display(),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let args = std::env::args_os()
            .skip(1)
            .map(|a| {
                a.into_string()
                    .map_err(|a| anyhow!("cannot pass the argument {a:?} (not UTF-8) to {SERVER}"))
            })
            .collect::<Result<Vec<String>>>()?;
        let cwd = std::env::current_dir()
            .context("cannot read the current directory")?
            .into_os_string()
            .into_string()
            .map_err(|d| anyhow!("the current directory {d:?} is not UTF-8"))?;
        let stdin = reads_stdin(&cli.command);
        let mut line = serde_json::json!({ "args": args, "cwd": cwd, "stdin": stdin }).to_string();
        line.push('\n');
        if line.len() as u64 > MAX_REQUEST {
            bail!(
                "the command is too long to send to {SERVER} ({} bytes as a request; at most {})",
                line.len(),
                MAX_REQUEST
            );
        }

        // From here on plain blocking I/O: this process does nothing else meanwhile.
        let wait = socket_timeout();
        let sock = stream
            .into_std()
            .map_err(|e| anyhow!("local socket: {e}"))?;
        let setup = |r: std::io::Result<()>| r.map_err(|e| anyhow!("local socket: {e}"));
        setup(sock.set_nonblocking(false))?;
        setup(sock.set_read_timeout(Some(wait)))?;
        setup(sock.set_write_timeout(Some(wait)))?;
        let unsent = (&sock).write_all(line.as_bytes()).err();
        // Stdin may rightly wait on the server for long (a `put` waits its turn to write before
        // it reads): its liveness shows in the keepalives the reads below wait for.
        setup(sock.set_write_timeout(None))?;
        if unsent.is_some() {
            // The server may have answered why it stopped reading (read below).
        } else if stdin {
            let mut w = sock.try_clone().map_err(|e| anyhow!("local socket: {e}"))?;
            // A thread of its own: the process exits when the answer is complete, even if
            // stdin is still open.
            std::thread::spawn(move || {
                let mut input = std::io::stdin().lock();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // Exiting closes the connection without a half-close: the server
                        // writes nothing.
                        Err(e) => {
                            let _ = writeln!(std::io::stderr(), "error: reading stdin: {e}");
                            std::process::exit(1);
                        }
                    };
                    // The server stopped reading (the command failed, or the server is gone):
                    // its answer, or the lack of one, is the main thread's to report.
                    if w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        } else {
            // A failure here shows in the reads below.
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }

        let mut rd = std::io::BufReader::new(&sock);
        loop {
            let mut head = [0u8; 5];
            rd.read_exact(&mut head)
                .map_err(|e| lost(&e, unsent.as_ref(), wait))?;
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_CLIENT_FRAME {
                bail!("{SERVER} sent a {len}-byte frame");
            }
            let mut payload = vec![0u8; len];
            rd.read_exact(&mut payload)
                .map_err(|e| lost(&e, unsent.as_ref(), wait))?;
            match head[0] {
                // Our own stdout: a broken pipe here is the quiet exit of `cohd cat | head`.
                TAG_STDOUT if !payload.is_empty() => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&payload)?;
                    o.flush()?;
                }
                TAG_STDOUT => {}
                TAG_STDERR => {
                    let _ = std::io::stderr().write_all(&payload);
                }
                TAG_EXIT => {
                    return Ok(payload.first().copied().unwrap_or(1));
                }
                t => bail!("{SERVER} sent an unknown frame ({t})"),
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Server

    /// The listening socket of a `cohd serve`; removes the socket file when dropped.
    #[derive(Debug)]
    pub(crate) struct LocalServer {
        listener: UnixListener,
        path: PathBuf,
    }

    impl LocalServer {
        /// Listens on the store's socket. The caller holds the store's lock, so a socket file
        /// already there is stale (its server is gone) and is replaced. When the socket cannot
        /// be made (a directory path too long for a socket address, say) this warns and gives
        /// `None`: the server still serves peers, but other commands find the store in use.
        pub(crate) fn bind(store: &Store) -> Option<Self> {
            let path = socket_path(store.dir()?);
            let shown = path.display().to_string();
            let warn = |e: &dyn std::fmt::Display| {
                eprintln!(
                    "warning: cannot listen on {shown}: {e}; other cohd commands on this store \
                     fail while this server runs"
                );
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn(&e);
                    return None;
                }
            }
            let listener = match UnixListener::bind(&path) {
                Ok(l) => l,
                Err(e) => {
                    warn(&e);
                    return None;
                }
            };
            let server = Self { listener, path };
            {
                use std::os::unix::fs::PermissionsExt;
                let only_us = std::fs::Permissions::from_mode(0o600);
                if let Err(e) = std::fs::set_permissions(&server.path, only_us) {
                    warn(&e);
                    return None;
                }
            }
            Some(server)
        }
    }

    impl Drop for LocalServer {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Answers forwarded commands, several at once, until the future is dropped (never,
    /// without a socket). Runs next to the server's upkeep in the same task; the commands
    /// interleave at their awaits, so one waiting on its client (stdin, or a client slow to
    /// read) holds up no other command, nor the upkeep or replication.
    pub(crate) async fn run_server(
        local: Option<LocalServer>,
        store: &Store,
        co: &CoDrive,
        served: &dyn ServedCommands,
    ) -> Result<()> {
        let Some(local) = local else {
            return std::future::pending().await;
        };
        let listener = &local.listener;
        let mut running = FuturesUnordered::new();
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            let pause = retry.take();
            let accept = async move {
                if let Some(t) = pause {
                    tokio::time::sleep_until(t).await;
                }
                listener.accept().await
            };
            tokio::select! {
                accepted = accept, if running.len() < MAX_RUNNING => match accepted {
                    // A client that goes away mid-answer is its own business.
                    Ok((stream, _)) => running.push(async move {
                        let _ = answer(stream, store, co, served).await;
                    }),
                    // Out of file descriptors, say: try again shortly, the commands running on.
                    Err(_) => retry = Some(tokio::time::Instant::now() + Duration::from_millis(100)),
                },
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
    }

    /// A forwarded command, as the client sent it.
    #[derive(Debug)]
    struct Request {
        args: Vec<String>,
        cwd: PathBuf,
        stdin: bool,
    }

    fn parse_request(line: &[u8]) -> Result<Request> {
        let v: serde_json::Value = serde_json::from_slice(line).context("not JSON")?;
        let args = v["args"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .context("`args` is not a list of strings")?;
        let cwd = PathBuf::from(v["cwd"].as_str().context("`cwd` is not a string")?);
        if !cwd.is_absolute() {
            bail!("`cwd` is not an absolute path");
        }
        let stdin = v["stdin"].as_bool().context("`stdin` is not a boolean")?;
        Ok(Request { args, cwd, stdin })
    }

    /// Reads one request from `stream`, runs it, and sends the answer.
    async fn answer(
        stream: UnixStream,
        store: &Store,
        co: &CoDrive,
        served: &dyn ServedCommands,
    ) -> std::io::Result<()> {
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        let mut limited = (&mut rd).take(MAX_REQUEST);
        let read = limited.read_until(b'\n', &mut line);
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(_)) if line.ends_with(b"\n") => {
                parse_request(&line).context("malformed request from a local cohd")
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(n)) if n as u64 >= MAX_REQUEST => Err(anyhow!(
                "request from a local cohd longer than {MAX_REQUEST} bytes"
            )),
            Ok(Ok(_)) => Err(anyhow!("incomplete request from a local cohd")),
            Err(_) => Err(anyhow!("no request from a local cohd")),
        };
        let mut io = Io {
            out: Out::remote(wr),
            stdin: Box::new(tokio::io::empty()),
        };
        let link = io.out.link();
        let result = match request {
            Ok(req) => {
                if req.stdin {
                    io.stdin = Box::new(rd);
                }
                let run = catch_panic(execute(&req, store, co, served, &mut io));
                match link {
                    Some(link) => tokio::select! {
                        r = run => r,
                        never = keep_alive(link) => match never {},
                    },
                    None => run.await,
                }
            }
            Err(e) => Err(e),
        };
        // Output still buffered goes out with the exit status.
        let code = match &result {
            Ok(()) => 0,
            Err(e) => {
                io.out.note(&format!("error: {}", output::one_line(e)));
                1
            }
        };
        let Some((w, mut frames)) = io.out.into_remote() else {
            return Ok(());
        };
        push_frame(&mut frames, TAG_EXIT, &[code]);
        let mut w = w.lock().await;
        w.write_all(&frames).await?;
        w.flush().await?;
        w.shutdown().await
    }

    /// Sends an empty stdout frame every [`keepalive_every`], so that a client hears from a
    /// server busy with its command (or waiting for the client's stdin) and times out only on a
    /// server that is stuck or gone. Never returns; once the client is gone it only waits: the
    /// command finds that out itself (and is not cut off mid-write).
    async fn keep_alive(link: Link) -> std::convert::Infallible {
        let every = keepalive_every();
        let mut frame = Vec::new();
        push_frame(&mut frame, TAG_STDOUT, &[]);
        loop {
            tokio::time::sleep(every).await;
            let mut w = link.lock().await;
            if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
                drop(w);
                return std::future::pending().await;
            }
        }
    }

    /// Runs `fut`, turning a panic inside it into an error: a bug that one forwarded command
    /// runs into must not take the server down.
    async fn catch_panic<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx)))
                .unwrap_or_else(|_| {
                    let msg = crate::LAST_PANIC
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .unwrap_or_else(|| "unknown panic".into());
                    std::task::Poll::Ready(Err(anyhow!(
                        "internal error: {}",
                        msg.replace('\n', " ")
                    )))
                })
        })
        .await
    }

    /// Runs a forwarded command against the served store and co-drive.
    async fn execute(
        req: &Request,
        store: &Store,
        co: &CoDrive,
        served: &dyn ServedCommands,
        io: &mut Io,
    ) -> Result<()> {
        let argv = std::iter::once("cohd".to_string()).chain(req.args.iter().cloned());
        let clap_error = |e: clap::Error| {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default().to_string();
            anyhow!("{}", first.trim_start_matches("error: "))
        };
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .map_err(clap_error)?;
        let cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
        let name = matches.subcommand_name().unwrap_or("?");
        // What works with the serve's own connections.
        if let Some(run) = served.run(&cli, store, co, &mut io.out) {
            let r = run.await;
            return durable(store, r).await;
        }
        let dir = store.dir().unwrap_or(Path::new("?")).display();
        match &cli.command {
            // Only the commands that work on an open co-drive (what `dispatch` runs).
            Command::Info { .. }
            | Command::Put { .. }
            | Command::Cat { .. }
            | Command::Ls { .. }
            | Command::Rm { .. }
            | Command::Stat { .. }
            | Command::Symlink { .. }
            | Command::Import { .. }
            | Command::Export { .. }
            | Command::Log { .. }
            | Command::Diff { .. }
            | Command::Whoami
            | Command::Writers { .. }
            | Command::Authorize { .. }
            | Command::Deauthorize { .. }
            | Command::Conflicts { .. }
            | Command::Download { .. }
            | Command::Clear { .. } => {}
            Command::Serve { .. } => bail!("the store at {dir} is already served by `cohd serve`"),
            Command::Init { .. } => {
                bail!("a store already exists at {dir} (`cohd serve` is serving it)")
            }
            _ => bail!(
                "`cohd {name}` cannot run while `cohd serve` runs on the store at {dir} (stop \
                 the server first)"
            ),
        }
        if !cli.peer.is_empty() {
            bail!(
                "--peer cannot be used while `cohd serve` runs on the store at {dir} (the \
                 server already replicates with the peers connected to it)"
            );
        }
        let command = with_local_paths(cli.command, &req.cwd);
        let other;
        let co = match &cli.drive {
            None => co,
            Some(k) => {
                let k: Key = k.parse()?;
                if k == co.key() {
                    co
                } else {
                    // Another co-drive the store holds: read it here. Writes to it would go to
                    // the local writer's drive through a second handle, which could interleave
                    // with the server's own writes to that drive (authorizations it grants).
                    let writes = matches!(
                        command,
                        Command::Put { .. }
                            | Command::Rm { .. }
                            | Command::Symlink { .. }
                            | Command::Import { .. }
                            | Command::Authorize { .. }
                            | Command::Deauthorize { .. }
                    );
                    if writes {
                        bail!(
                            "`cohd serve` runs on the store at {dir} for co-drive {}: `cohd \
                             {name}` on another co-drive (--drive {k}) must wait until it stops",
                            co.key()
                        );
                    }
                    other = CoDrive::open(store, k, "db").await?;
                    &other
                }
            }
        };
        let r = dispatch(&command, co, io).await;
        durable(store, r).await
    }

    /// Makes a command's writes durable before the client hears of success, as for a command
    /// run on its own. The fsyncs run off this task, which the other commands and the upkeep
    /// share.
    async fn durable(store: &Store, r: Result<()>) -> Result<()> {
        let s = store.clone();
        let synced = tokio::task::spawn_blocking(move || s.flush())
            .await
            .context("syncing the store")?;
        r?;
        synced?;
        Ok(())
    }

    /// The command with its local paths made absolute against the client's directory.
    fn with_local_paths(command: Command, cwd: &Path) -> Command {
        match command {
            Command::Put {
                path,
                local,
                executable,
                metadata,
            } => Command::Put {
                path,
                local: local.map(|l| if l == Path::new("-") { l } else { cwd.join(l) }),
                executable,
                metadata,
            },
            Command::Import {
                local,
                path,
                delete,
            } => Command::Import {
                local: cwd.join(local),
                path,
                delete,
            },
            Command::Export { mut args } => {
                if let Some(to) = args.last_mut() {
                    *to = cwd.join(&*to).to_string_lossy().into_owned();
                }
                Command::Export { args }
            }
            c => c,
        }
    }
}

/// Without Unix sockets there is no forwarding: a served store is in use, as any other.
#[cfg(not(unix))]
mod other {
    use anyhow::Result;
    use co_hyperdrive::CoDrive;
    use co_hyperdrive::Store;

    use super::ServedCommands;
    use crate::Cli;

    pub(crate) async fn forward(_cli: &Cli, locked: anyhow::Error) -> Result<u8> {
        Err(locked)
    }

    #[derive(Debug)]
    pub(crate) struct LocalServer;

    impl LocalServer {
        pub(crate) fn bind(_store: &Store) -> Option<Self> {
            None
        }
    }

    pub(crate) async fn run_server(
        _local: Option<LocalServer>,
        _store: &Store,
        _co: &CoDrive,
        _served: &dyn ServedCommands,
    ) -> Result<()> {
        std::future::pending().await
    }
}
