//! What the server sends: content types by file extension, and folder listings as HTML (for
//! people) or JSON (for scripts). Every name and key that reaches HTML is escaped: drive data
//! comes from other writers.

use std::fmt::Write;

use co_hyperdrive::format::{Entry, Key};
use co_hyperdrive::PathVersion;

use super::request::{encode_path, percent_encode};
use crate::cmd::versions_json;

/// The content type of a file named `name`, by its extension (`application/octet-stream`
/// when unknown: the browser then offers a download rather than guessing).
pub(crate) fn content_type(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" | "log" | "rs" | "toml" | "yaml" | "yml" | "sh" | "c" | "h" | "py" => {
            "text/plain; charset=utf-8"
        }
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        _ => "application/octet-stream",
    }
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One row of a folder listing.
#[derive(Debug)]
pub(crate) enum Row {
    /// A subfolder (it holds visible files).
    Folder { name: String },
    /// A path with a version: a visible file or symlink, or a conflict whose winner is a
    /// delete (`entry: None`), still listed so the concurrent edit can be found.
    File {
        name: String,
        writer: Key,
        seq: u64,
        /// When its writer wrote it (ms since the Unix epoch, by its writer's clock).
        time: Option<u64>,
        /// (Boxed: an entry is large, a folder row small.)
        entry: Option<Box<Entry>>,
        /// Every concurrent version (the winner included) when conflicted, else empty.
        conflicts: Vec<PathVersion>,
    },
}

/// A folder listing at one version of the co-drive.
#[derive(Debug)]
pub(crate) struct Listing {
    /// The folder, `/` or `/a/b`.
    pub(crate) folder: String,
    /// The version shown (`?at=` or the current one), as `--at` takes it.
    pub(crate) version: String,
    /// Whether `?at=` picked it (links then keep it).
    pub(crate) pinned: bool,
    pub(crate) rows: Vec<Row>,
}

impl Listing {
    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.folder.trim_end_matches('/'))
    }

    /// `?at=…` to append to links while a version is pinned.
    fn keep(&self, first: bool) -> String {
        if self.pinned {
            format!(
                "{}at={}",
                if first { '?' } else { '&' },
                percent_encode(&self.version)
            )
        } else {
            String::new()
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| match r {
                Row::Folder { name } => serde_json::json!({
                    "name": name,
                    "path": self.path_of(name),
                    "type": "folder",
                }),
                Row::File {
                    name,
                    writer,
                    seq,
                    time,
                    entry,
                    conflicts,
                } => {
                    let kind = match entry {
                        None => "deleted",
                        Some(e) if e.blob.is_none() => "symlink",
                        Some(_) => "file",
                    };
                    serde_json::json!({
                        "name": name,
                        "path": self.path_of(name),
                        "type": kind,
                        "size": entry.as_ref().map(|e| e.size()),
                        "executable": entry.as_ref().map(|e| e.executable),
                        "linkname": entry.as_ref().and_then(|e| e.linkname.clone()),
                        "writer": writer.to_hex(),
                        "seq": seq,
                        "time": time,
                        "conflicts": versions_json(conflicts, (*writer, *seq)),
                    })
                }
            })
            .collect();
        serde_json::json!({
            "path": if self.folder == "/" { "/".to_string() } else { format!("{}/", self.folder) },
            "version": self.version,
            "entries": rows,
        })
    }

    pub(crate) fn html(&self) -> String {
        let shown = if self.folder == "/" {
            "/".to_string()
        } else {
            format!("{}/", self.folder)
        };
        let title = escape(&shown);
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{title}</title><style>{STYLE}</style></head><body>\n\
             <h1>{title}</h1>\n"
        );
        let _ = writeln!(
            h,
            "<form class=\"version\" method=\"get\" action=\"\"><label>Version, or a UTC time \
             such as 2026-12-06T10:00:00Z <input name=\"at\" value=\"{}\" size=\"40\" \
             spellcheck=\"false\"></label> \
             <button>Show</button> <a href=\"{}\">latest</a></form>",
            escape(&self.version),
            escape(&encode_path(&shown)),
        );
        if self.pinned {
            h.push_str("<p class=\"note\">A past version (read-only).</p>\n");
        }
        h.push_str(
            "<table><thead><tr><th>Name</th><th>Size</th><th>Written (UTC)</th><th>Writer</th>\
             <th>Conflict</th></tr></thead><tbody>\n",
        );
        if self.folder != "/" {
            let _ = writeln!(
                h,
                "<tr class=\"folder\"><td><a href=\"../{}\">../</a></td><td></td><td></td><td></td>\
                 <td></td></tr>",
                escape(&self.keep(true))
            );
        }
        for r in &self.rows {
            match r {
                Row::Folder { name } => {
                    let _ = writeln!(
                        h,
                        "<tr class=\"folder\"><td><a href=\"{}/{}\">{}/</a></td><td>-</td>\
                         <td></td><td></td><td></td></tr>",
                        escape(&percent_encode(name)),
                        escape(&self.keep(true)),
                        escape(name)
                    );
                }
                Row::File {
                    name,
                    writer,
                    seq,
                    time,
                    entry,
                    conflicts,
                } => {
                    let href = percent_encode(name);
                    let w8 = &writer.to_hex()[..8];
                    let (size, what) = match entry {
                        None => ("-".to_string(), " <em>(deleted)</em>".to_string()),
                        Some(e) => match (&e.blob, &e.linkname) {
                            (None, Some(l)) => ("-".to_string(), format!(" &rarr; {}", escape(l))),
                            _ => (e.size().to_string(), String::new()),
                        },
                    };
                    let class = if conflicts.is_empty() {
                        "file"
                    } else {
                        "file conflict"
                    };
                    let name_cell = if entry.is_some() {
                        format!(
                            "<a href=\"{}{}\">{}</a>{what}",
                            escape(&href),
                            escape(&self.keep(true)),
                            escape(name)
                        )
                    } else {
                        format!("{}{what}", escape(name))
                    };
                    let _ = write!(
                        h,
                        "<tr class=\"{class}\"><td>{name_cell}</td><td>{size}</td>\
                         <td>{}</td><td title=\"{}\">{w8}</td><td>",
                        when(*time),
                        writer.to_hex()
                    );
                    if !conflicts.is_empty() {
                        let _ = write!(
                            h,
                            "<span class=\"mark\">conflict: {} versions</span> ",
                            conflicts.len()
                        );
                        let links: Vec<String> = conflicts
                            .iter()
                            .map(|v| {
                                let vw = v.writer.to_hex();
                                // Who, how big and when, as `cohd conflicts` says it.
                                let what = match &v.entry {
                                    None => "deleted".to_string(),
                                    Some(e) => format!("{} B", e.size()),
                                };
                                let shown = if (v.writer, v.seq) == (*writer, *seq) {
                                    ", shown"
                                } else {
                                    ""
                                };
                                let label =
                                    format!("by {} ({what}, {}{shown})", &vw[..8], when(v.time));
                                if v.entry.is_none() {
                                    label
                                } else {
                                    format!(
                                        "<a class=\"version\" href=\"{}?writer={vw}{}\">{label}</a>",
                                        escape(&href),
                                        escape(&self.keep(false))
                                    )
                                }
                            })
                            .collect();
                        h.push_str(&links.join(", "));
                    }
                    h.push_str("</td></tr>\n");
                }
            }
        }
        h.push_str("</tbody></table>\n</body></html>\n");
        h
    }
}

/// A version's write time as listings show it (`-` when it was recorded without one).
fn when(time: Option<u64>) -> String {
    time.map(crate::output::utc)
        .unwrap_or_else(|| "-".to_string())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em}\
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left}\
td:nth-child(2){text-align:right;font-variant-numeric:tabular-nums}\
tr.conflict{background:#fff3cd}.mark{font-weight:bold;color:#8a5a00}\
.version input{font-family:monospace}.note{color:#555}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_by_extension() {
        assert_eq!(content_type("a.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("clip.mp4"), "video/mp4");
        assert_eq!(content_type("x.tar.gz"), "application/gzip");
        assert_eq!(content_type(".txt"), "application/octet-stream");
        assert_eq!(content_type("README"), "application/octet-stream");
    }

    #[test]
    fn names_are_escaped() {
        let l = Listing {
            folder: "/d".into(),
            version: "v\"<".into(),
            pinned: true,
            rows: vec![
                Row::Folder {
                    name: "<script>".into(),
                },
                Row::File {
                    name: "a\"b'&.txt".into(),
                    writer: Key([7; 32]),
                    seq: 3,
                    time: Some(0),
                    entry: Some(Box::default()),
                    conflicts: vec![],
                },
            ],
        };
        let h = l.html();
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;/"));
        assert!(h.contains("a&quot;b&#39;&amp;.txt"));
        assert!(h.contains("href=\"a%22b%27%26.txt?at=v%22%3C\""));
        assert!(h.contains("value=\"v&quot;&lt;\""));
        assert!(h.contains("<td>1970-01-01T00:00:00Z</td>"), "{h}");
    }
}
