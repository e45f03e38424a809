//! `cohd serve --http ADDR`: the merged co-drive for web browsers, read-only.
//!
//! `GET /folder/` lists a folder (HTML, or JSON with `Accept: application/json`) with sizes,
//! writers and conflict marks; `GET /path` sends a file with a content type from its extension,
//! honouring `Range` (206/416) and `If-None-Match` (304; the ETag is the version's writer and
//! seq, which name its content forever; a listing's is a digest of it). `?at=TIME` or
//! `?at=FRONTIER` shows a past version, as `--at` does;
//! `?writer=KEY` picks one writer's version of a conflicted path, as `cat --writer` does.
//! Content this store lacks is fetched from connected peers as it is read.
//!
//! This is the top layer: hyper parses HTTP, [`request`] checks what it asks for, [`shown`](mod@shown) reads
//! the version asked for (the current one from the index on disk, so a request costs the same
//! whatever the drive's size), [`page`] renders listings; the library knows nothing of HTTP.

mod page;
mod request;
mod shown;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use co_hyperdrive::format::{path, BlobId, Entry, Key};
use co_hyperdrive::DriveError;
use co_hyperdrive::{BeeError, BlobError};
use co_hyperdrive::{Child, CoDrive, CoDriveError, Frontier};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cmd::{pick_version, Pick};
use page::{Listing, Row};
use request::{BadRequest, Range};
use shown::Shown;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent a whole request head within this time is dropped (a slow
/// sender must not hold a connection slot forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Content goes out in pieces of this size: a slow reader holds at most one piece in memory.
const PIECE: u64 = 256 << 10;
/// Pieces of one response read at once (see [`file`](fn@file)).
const AHEAD: usize = 4;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Binds the HTTP listener (before `serve` prints its addresses, so a taken port fails early).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {addr}"))
}

/// Serves HTTP on `listener` until dropped (which closes every connection it accepted).
pub(crate) async fn run(listener: TcpListener, co: Arc<CoDrive>) -> Result<()> {
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        // Finished connections are reaped as we go, so the set stays as small as the load.
        while conns.try_join_next().is_some() {}
        let permit = slots.clone().acquire_owned().await?;
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: wait a little rather than spin or stop.
            Err(e) => {
                eprintln!("warning: http: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let co = co.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let co = co.clone();
                async move { Ok::<_, Infallible>(respond(&co, local, req).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            // Broken connections are the client's business: nothing to report.
            let _ = b.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// Why a request fails: a status and a line of text for the client.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    msg: String,
}

impl Failure {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("not found: {what}"))
    }
}

impl From<BadRequest> for Failure {
    fn from(e: BadRequest) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.0)
    }
}

/// The status a library error deserves: content no peer delivered is a gateway timeout (the
/// store itself is fine), a version this store does not hold is not found, the rest is ours.
impl From<CoDriveError> for Failure {
    fn from(e: CoDriveError) -> Self {
        let status = match &e {
            CoDriveError::BeyondStore { .. } => StatusCode::NOT_FOUND,
            CoDriveError::Drive(DriveError::NotFound(_)) => StatusCode::NOT_FOUND,
            CoDriveError::Drive(DriveError::Path(_)) => StatusCode::BAD_REQUEST,
            CoDriveError::Drive(DriveError::Bee(BeeError::InsideBatch { .. })) => {
                StatusCode::BAD_REQUEST
            }
            CoDriveError::Drive(DriveError::Blob(
                BlobError::NotAvailable(_) | BlobError::Unavailable(_),
            )) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// Answers one request; never panics on what the client sent.
async fn respond(co: &Arc<CoDrive>, local: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    // The name the client used: the request target's authority if it has one, else Host.
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => header_of(&req, header::HOST),
    };
    let r = match *req.method() {
        _ if !request::host_allowed(host, local) => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "this server answers only to localhost and loopback addresses",
        )),
        Method::GET | Method::HEAD => answer(co, &req).await,
        _ => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: only GET and HEAD",
        )),
    };
    let mut resp = r.unwrap_or_else(|f| {
        let mut r = Response::new(full(format!("{}\n", f.msg)));
        *r.status_mut() = f.status;
        set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if f.status == StatusCode::METHOD_NOT_ALLOWED {
            set(&mut r, header::ALLOW, "GET, HEAD");
        }
        r
    });
    set(&mut resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if head {
        // Headers as for GET (Content-Length included), no body.
        if !resp.headers().contains_key(header::CONTENT_LENGTH) {
            if let Some(n) = hyper::body::Body::size_hint(resp.body()).exact() {
                set(&mut resp, header::CONTENT_LENGTH, &n.to_string());
            }
        }
        *resp.body_mut() = empty();
    }
    resp
}

fn set(r: &mut Response<Body>, name: header::HeaderName, value: &str) {
    // Every value set here is built from checked text; one that is not is left out.
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn header_of<B>(req: &Request<B>, name: header::HeaderName) -> Option<&[u8]> {
    req.headers().get(name).map(HeaderValue::as_bytes)
}

async fn answer<B>(co: &Arc<CoDrive>, req: &Request<B>) -> Result<Response<Body>, Failure> {
    let target = request::target(req.uri().path())?;
    let query = request::query(req.uri().query())?;
    let snap = shown(co, query.at.as_deref()).await?;
    let p = target.path.as_str();
    let is_folder = p == "/" || snap.is_folder(p)?;
    let redirect = |to: String| {
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
        set(
            &mut r,
            header::LOCATION,
            &format!("{}{q}", request::encode_path(&to)),
        );
        Ok(r)
    };
    if let Some(w) = &query.writer {
        // One writer's version of a path, even one whose winner is a delete.
        let Some(r) = snap.resolved(p)? else {
            return Err(Failure::not_found(p));
        };
        let versions = if r.conflicts.is_empty() {
            std::slice::from_ref(&r.winner)
        } else {
            &r.conflicts[..]
        };
        let v = match pick_version(versions, w) {
            Pick::One(v) => v,
            Pick::None => return Err(Failure::not_found(&format!("{p} by writer {w}"))),
            Pick::Ambiguous => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("writer {w} is ambiguous: give more of the key"),
                ))
            }
            Pick::Invalid => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "`writer` is not a writer key or a hex prefix of one",
                ))
            }
        };
        let Some(entry) = &v.entry else {
            return Err(Failure::not_found(&format!(
                "{p} (deleted by {})",
                v.writer
            )));
        };
        let mut resp = file(co, req, p, v.writer, v.seq, entry).await?;
        // Saved under the name `export` gives it, so versions saved side by side stay apart.
        if (v.writer, v.seq) != (r.winner.writer, r.winner.seq) {
            let name = p.rsplit('/').next().unwrap_or_default();
            let saved = request::percent_encode(&crate::cmd::conflict_name(name, &v.writer));
            set(
                &mut resp,
                header::CONTENT_DISPOSITION,
                &format!("inline; filename*=UTF-8''{saved}"),
            );
        }
        return Ok(resp);
    }
    if target.slash {
        if is_folder {
            return listing(req, &snap, p, query.at.is_some());
        }
        if snap.entry(p).map_err(Failure::from)?.is_some() {
            return redirect(p.to_string());
        }
        return Err(Failure::not_found(p));
    }
    match snap.stat(p) {
        // Typed by the file a link leads to: its name says what the content is.
        Ok(Some(e)) => return file(co, req, &e.path, e.writer, e.seq, &e.entry).await,
        Ok(None) => {}
        // Too many links, or a link to no file: the drive's content is at fault, not the
        // request.
        Err(e @ CoDriveError::Drive(DriveError::Symlink(_) | DriveError::Path(_))) => {
            return Err(Failure::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => return Err(e.into()),
    }
    if is_folder {
        return redirect(format!("{p}/"));
    }
    // A symlink to a folder: where it leads (resolved as the drive resolves links).
    if let Some(e) = snap.entry(p).map_err(Failure::from)? {
        if let (None, Some(l)) = (&e.entry.blob, &e.entry.linkname) {
            let to = path::resolve(&if l.starts_with('/') {
                l.clone()
            } else {
                format!("{p}/{l}")
            });
            if to == "/" || snap.is_folder(&to)? {
                let to = if to == "/" { to } else { format!("{to}/") };
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::FOUND;
                set(&mut r, header::LOCATION, &request::encode_path(&to));
                return Ok(r);
            }
        }
    }
    Err(Failure::not_found(p))
}

/// The view asked for: `?at=` (a past version) or the current one (from the index on disk).
async fn shown<'c>(co: &'c CoDrive, at: Option<&str>) -> Result<Shown<'c>, Failure> {
    let snap = match at {
        None => Shown::Now(co.indexed().await?),
        Some(at) => {
            // A time (`2026-12-06T10:00:00Z`, or a date for its end) or a version, as `--at`.
            let version: Frontier = match crate::output::parse_utc(at) {
                Some(ms) => {
                    let v = co.version_at_time(ms).await?;
                    if v.get(&co.key()) == 0 {
                        return Err(Failure::not_found(&format!(
                            "no version of the co-drive at or before {at}"
                        )));
                    }
                    v
                }
                None => at.parse().map_err(|e: co_hyperdrive::FrontierError| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "at: not a time (YYYY-MM-DDTHH:MM:SSZ, YYYY-MM-DD) or a version: {e}"
                        ),
                    )
                })?,
            };
            Shown::At(co.checkout(&version).await?)
        }
    };
    if snap.missing().contains(&co.key()) {
        let msg = if at.is_some() {
            "that version names no length of the co-drive's primary writer"
        } else {
            "the co-drive's primary drive is not in this store yet"
        };
        return Err(Failure::new(StatusCode::NOT_FOUND, msg));
    }
    Ok(snap)
}

/// A folder's listing, from one pass over what it holds (a subfolder's paths are read to its
/// first visible file only).
fn listing<B>(
    req: &Request<B>,
    snap: &Shown<'_>,
    folder: &str,
    pinned: bool,
) -> Result<Response<Body>, Failure> {
    let f = path::folder(folder);
    let mut rows = Vec::new();
    snap.for_each_child(&f, |c| match c {
        Child::Folder { name } => rows.push(Row::Folder { name }),
        // A path deleted without conflict is not shown; a conflicted delete is.
        Child::File { resolved: r, .. } if r.winner.entry.is_none() && r.conflicts.is_empty() => {}
        Child::File { name, resolved: r } => rows.push(Row::File {
            name,
            writer: r.winner.writer,
            seq: r.winner.seq,
            time: r.winner.time,
            entry: r.winner.entry.map(Box::new),
            conflicts: r.conflicts,
        }),
    })?;
    let l = Listing {
        folder: if f.is_empty() { "/".into() } else { f },
        version: snap.version().to_string(),
        pinned,
        rows,
    };
    let (body, ctype) = if request::wants_json(header_of(req, header::ACCEPT)) {
        (format!("{}\n", l.json()), "application/json")
    } else {
        (l.html(), "text/html; charset=utf-8")
    };
    // The listing names the co-drive version it shows, so a digest of it changes exactly when
    // the version (or the folder's rows, or the representation) does: a strong validator.
    let etag = listing_etag(body.as_bytes());
    let mut r = Response::new(empty());
    set(&mut r, header::ETAG, &etag);
    set(&mut r, header::VARY, "Accept");
    set(&mut r, header::CACHE_CONTROL, "no-cache");
    // Listings run no script: drive names cannot turn into code even if escaping failed.
    set(
        &mut r,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    );
    if request::none_match(header_of(req, header::IF_NONE_MATCH), &etag) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(r);
    }
    set(&mut r, header::CONTENT_TYPE, ctype);
    *r.body_mut() = full(body);
    Ok(r)
}

/// A listing's ETag: 128 bits of BLAKE2b over its bytes (quoted; a `l` tells it from a file's).
fn listing_etag(body: &[u8]) -> String {
    use blake2::digest::consts::U16;
    use blake2::{Blake2b, Digest};
    format!("\"l-{}\"", hex::encode(Blake2b::<U16>::digest(body)))
}

/// Sends one version of a file: whole, a range of it, or "not modified".
async fn file<B>(
    co: &Arc<CoDrive>,
    req: &Request<B>,
    shown: &str,
    writer: Key,
    seq: u64,
    entry: &Entry,
) -> Result<Response<Body>, Failure> {
    let Some(blob) = entry.blob else {
        return Err(Failure::not_found(&format!(
            "{shown} (a symlink leading nowhere)"
        )));
    };
    let size = blob.byte_length;
    // A version's content never changes, so its writer and seq are a strong validator.
    let etag = format!("\"{}-{seq}\"", writer.to_hex());
    let mut r = Response::new(empty());
    let name = shown.rsplit('/').next().unwrap_or_default();
    set(&mut r, header::ETAG, &etag);
    set(&mut r, header::ACCEPT_RANGES, "bytes");
    // The winner of a path can change at any time: always ask again (cheap, with the ETag).
    set(&mut r, header::CACHE_CONTROL, "no-cache");
    if request::none_match(header_of(req, header::IF_NONE_MATCH), &etag) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(r);
    }
    set(&mut r, header::CONTENT_TYPE, page::content_type(name));
    let range = if request::if_range_holds(header_of(req, header::IF_RANGE), &etag) {
        request::range(header_of(req, header::RANGE), size)
    } else {
        Range::Full
    };
    let (start, end) = match range {
        Range::Full => (0, size),
        Range::Part { start, end } => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{size}"),
            );
            (start, end + 1)
        }
        Range::Unsatisfiable => {
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set(&mut r, header::CONTENT_RANGE, &format!("bytes */{size}"));
            set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
            *r.body_mut() = full("range not satisfiable\n");
            return Ok(r);
        }
    };
    set(&mut r, header::CONTENT_LENGTH, &(end - start).to_string());
    if req.method() == Method::HEAD || start == end {
        return Ok(r);
    }
    // The first piece is read before answering, so content no peer can deliver is a clean
    // error status rather than a cut-off 200.
    let first = read_piece(co, writer, blob, start, end).await?;
    let pos = start + first.len() as u64;
    // The rest in order, reading up to AHEAD pieces at once: on a sparse clone each piece
    // waits for a peer, and reads in parallel keep the link busy (bounded memory per client).
    let co = co.clone();
    let rest = futures::stream::iter((pos..end).step_by(PIECE as usize))
        .map(move |p| {
            let co = co.clone();
            async move {
                match read_piece(&co, writer, blob, p, end).await {
                    Ok(b) if b.is_empty() => Err(std::io::Error::other("the content ended early")),
                    Ok(b) => Ok(b),
                    // Headers are out: cutting the connection is how HTTP says it failed.
                    Err(f) => Err(std::io::Error::other(f.msg)),
                }
            }
        })
        .buffered(AHEAD);
    let stream = futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .map(|r| r.map(Frame::data));
    *r.body_mut() = StreamBody::new(stream).boxed_unsync();
    Ok(r)
}

/// Reads up to [`PIECE`] bytes of `blob` from `pos` (and before `end`).
async fn read_piece(
    co: &CoDrive,
    writer: Key,
    blob: BlobId,
    pos: u64,
    end: u64,
) -> Result<Bytes, Failure> {
    let len = PIECE.min(end - pos);
    let mut buf = Vec::with_capacity(len as usize);
    co.read_content(writer, &blob, pos, len, |c| {
        buf.extend_from_slice(c);
        Ok(())
    })
    .await?;
    Ok(Bytes::from(buf))
}
