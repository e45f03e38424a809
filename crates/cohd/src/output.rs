//! Output helpers: where a command's output goes, one-line errors, broken pipes, progress bars.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::cmd::forward::{push_frame, TAG_STDERR, TAG_STDOUT};

/// Remote output is sent to the client once this much is buffered (by [`Out::pace`]).
const PACE: usize = 256 << 10;

/// Where a command writes: this process's stdout and stderr, or — for a command forwarded to a
/// running `cohd serve` — frames to the client that forwarded it (see `cmd::forward`).
///
/// Commands write their stdout text with `write!`/`writeln!` and their stderr notes with
/// [`Out::note`]. Writes to a client are buffered: a command that prints a lot as it goes calls
/// [`Out::pace`] (or [`Out::drain`]) between steps, and whoever ran the command drains the rest.
pub(crate) struct Out {
    remote: Option<Remote>,
}

/// The connection to a forwarding client. Shared, so that keepalive frames can go out while a
/// command runs; whoever holds the lock writes whole frames, so frames never interleave.
pub(crate) type Link = Arc<Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;

struct Remote {
    w: Link,
    /// Stdout bytes not yet framed.
    stdout: Vec<u8>,
    /// Encoded frames not yet sent.
    frames: Vec<u8>,
}

impl Remote {
    /// Frames the pending stdout bytes, so what comes next keeps its order after them.
    fn seal(&mut self) {
        if !self.stdout.is_empty() {
            push_frame(&mut self.frames, TAG_STDOUT, &self.stdout);
            self.stdout.clear();
        }
    }

    async fn send(&mut self) -> std::io::Result<()> {
        self.seal();
        let mut w = self.w.lock().await;
        if !self.frames.is_empty() {
            w.write_all(&self.frames).await?;
            self.frames.clear();
        }
        w.flush().await
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

impl Out {
    /// This process's stdout and stderr.
    pub(crate) fn stdout() -> Self {
        Self { remote: None }
    }

    /// Frames to a forwarding client, written to `w`.
    pub(crate) fn remote(w: impl AsyncWrite + Unpin + Send + 'static) -> Self {
        Self {
            remote: Some(Remote {
                w: Arc::new(Mutex::new(Box::new(w))),
                stdout: Vec::new(),
                frames: Vec::new(),
            }),
        }
    }

    /// Whether the output goes to a forwarding client (no terminal here: no progress bars).
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// A line for stderr (a summary, not an error).
    pub(crate) fn note(&mut self, line: &str) {
        match &mut self.remote {
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Some(r) => {
                r.seal();
                push_frame(&mut r.frames, TAG_STDERR, format!("{line}\n").as_bytes());
            }
        }
    }

    /// Sends everything buffered to the client (flushes stdout here).
    pub(crate) async fn drain(&mut self) -> std::io::Result<()> {
        match &mut self.remote {
            None => std::io::stdout().flush(),
            Some(r) => r.send().await,
        }
    }

    /// [`Out::drain`] once a fair amount is buffered: bounds the memory of a long output.
    pub(crate) async fn pace(&mut self) -> std::io::Result<()> {
        match &mut self.remote {
            Some(r) if r.stdout.len() + r.frames.len() >= PACE => r.send().await,
            _ => Ok(()),
        }
    }

    /// Checks, at the end of a command's stdin, that the client is still there: a client that
    /// died mid-input also ends its stdin, and must not leave a truncated file behind. A client
    /// that half-closed its side normally still reads, so an (empty) frame to it goes through;
    /// one that is gone makes the write fail.
    pub(crate) async fn confirm_input(&mut self) -> std::io::Result<()> {
        match &mut self.remote {
            None => Ok(()),
            Some(r) => {
                r.seal();
                push_frame(&mut r.frames, TAG_STDOUT, &[]);
                r.send().await
            }
        }
    }

    /// The connection to the forwarding client, if any (for keepalive frames).
    pub(crate) fn link(&self) -> Option<Link> {
        self.remote.as_ref().map(|r| r.w.clone())
    }

    /// The client's writer, with what is still buffered (for the closing frames).
    pub(crate) fn into_remote(self) -> Option<(Link, Vec<u8>)> {
        self.remote.map(|mut r| {
            r.seal();
            (r.w, r.frames)
        })
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.remote {
            None => std::io::stdout().write(buf),
            Some(r) => {
                r.stdout.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &mut self.remote {
            None => std::io::stdout().write_all(buf),
            Some(r) => {
                r.stdout.extend_from_slice(buf);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &self.remote {
            None => std::io::stdout().flush(),
            Some(_) => Ok(()),
        }
    }
}

/// The error and its causes on one line.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    // Say what the user can do about content that is not here: the library's errors name a
    // block, which means nothing to a user.
    for p in &mut parts {
        for (tail, plain) in [
            (
                "is not available locally",
                "content not downloaded yet: connect a peer that has it with --peer HOST:PORT \
                 (or keep a `cohd serve` connected), or fetch it for offline use with `cohd \
                 download PATH` while connected",
            ),
            (
                "is not available from any connected peer",
                "content not downloaded yet, and no connected peer has it: connect one that \
                 does with --peer HOST:PORT (or keep a `cohd serve` connected)",
            ),
        ] {
            if let (Some(a), Some(b)) = (p.find("blob block "), p.find(tail)) {
                if a < b {
                    p.replace_range(a..b + tail.len(), plain);
                }
            }
        }
        // A block of a writer's file list (a clone or sync stopped before it had them all).
        if p.starts_with("block ") && p.ends_with("is not available locally") {
            *p = "the co-drive's file list is not all here yet (a clone or sync stopped \
                  midway?): run `cohd sync --peer HOST:PORT`, or keep a `cohd serve` connected"
                .to_string();
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// `cohd cat big | head` must not report an error when `head` exits. Only our own stdout's
/// broken pipe counts: failures talking to a `cohd serve` (`cmd::forward`) are plain messages
/// with no `io::Error` in their chain, so a broken pipe on its socket is an error as it should be.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A progress bar on stderr when it is a terminal; hidden otherwise, and for a forwarded
/// command (its terminal is the client's).
pub(crate) fn progress(out: &Out, len: u64, what: &str) -> ProgressBar {
    if out.is_remote() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// Human size.
pub(crate) fn size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A progress bar counting blocks on stderr when it is a terminal; hidden otherwise.
pub(crate) fn progress_blocks(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} blocks {per_sec} {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC, ISO 8601: one word, sorts as
/// text; no time zone database needed).
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, unsigned form).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A UTC time as `utc` writes it (`YYYY-MM-DDTHH:MM:SSZ`), or a date `YYYY-MM-DD` meaning
/// the end of that day, as ms since the Unix epoch; `None` if `s` is neither.
pub(crate) fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&month) {
        return None;
    }
    // A date means its end, a time in whole seconds (as `ls -l` shows one) the end of that
    // second, so what was shown written then is included; `.mmm` names a millisecond.
    let (secs_of_day, end_of_day) = match s.len() {
        10 => (86_399, 999),
        20 | 24 if b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[s.len() - 1] == b'Z' => {
            let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
            if h > 23 || m > 59 || sec > 59 {
                return None;
            }
            let ms = match s.len() {
                20 => 999,
                _ if b[19] == b'.' => num(20..23)?,
                _ => return None,
            };
            (h * 3600 + m * 60 + sec, ms)
        }
        _ => return None,
    };
    if year < 1970 || day == 0 || day > 31 {
        return None;
    }
    // A civil date to days since 1970-01-01 (H. Hinnant's algorithm, unsigned form).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some((days * 86_400 + secs_of_day) * 1000 + end_of_day)
}

#[cfg(test)]
mod tests {
    /// What a user can do about missing data is said in words, for file content and for the
    /// file list alike.
    #[test]
    fn a_missing_block_is_said_in_words() {
        use super::one_line;
        let content = anyhow::anyhow!("blob block 7 is not available locally");
        assert!(one_line(&content).starts_with("content not downloaded yet"));
        let list = anyhow::Error::msg("block 102000 is not available locally")
            .context("reading the co-drive");
        let said = one_line(&list);
        assert!(said.starts_with("reading the co-drive: the co-drive's file list is not all"));
        assert!(said.contains("cohd sync --peer"), "{said}");
        assert!(!said.contains("102000"), "{said}");
    }

    #[test]
    fn utc_dates() {
        for (secs, want) in [
            (0u64, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_765_038_303, "2025-12-06T16:25:03Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(super::utc(secs * 1000 + 999), want);
        }
        // Whatever a peer records, formatting never panics.
        let _ = super::utc(u64::MAX);
        // And back: a time shown in whole seconds means the end of that second (what was
        // shown written then is included); milliseconds name one.
        for ms in [0, 951_782_400_000, 1_765_038_303_000, 4_102_444_799_000] {
            assert_eq!(super::parse_utc(&super::utc(ms)), Some(ms + 999));
        }
        assert_eq!(
            super::parse_utc("2025-12-06T16:25:03.042Z"),
            Some(1_765_038_303_042)
        );
        assert_eq!(
            super::parse_utc("2000-02-29"),
            Some(951_782_400_000 + 86_399_999)
        );
        for bad in [
            "",
            "2000-13-01",
            "2000-02-29T24:00:00Z",
            "1969-12-31",
            "x000-01-01",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00:00.5Z",
            "2000-01-01T00:00:00,500Z",
        ] {
            assert_eq!(super::parse_utc(bad), None, "{bad}");
        }
    }
}
