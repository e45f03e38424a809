//! Hyperdrive path normalization: `unixPathResolve('/', name)`.
//!
//! Splits on `/` and `\`, resolves `.` and `..` (never above the root), collapses repeated
//! separators, forces a leading `/` and drops a trailing one.

/// Why a path is not usable as a file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path resolves to the root, which cannot hold a file.
    #[error("invalid path {0:?}: the root `/` cannot be a file")]
    Root(String),
    /// NUL cannot appear in a file name on any system we export to.
    #[error("invalid path {0:?}: contains a NUL byte")]
    Nul(String),
}

/// Resolves `name` against `/`; the result is `/` or `/a/b` (no trailing slash).
pub fn resolve(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(name.len() + 1);
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The file `name` may name, normalized: `None` for the root (only ever a folder). For paths
/// that name a folder or a file, like a download's.
pub fn file_or_root(name: &str) -> Result<Option<String>, PathError> {
    match normalize(name) {
        Ok(p) => Ok(Some(p)),
        Err(PathError::Root(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Normalizes a file name; the root alone is refused.
pub fn normalize(name: &str) -> Result<String, PathError> {
    if name.contains('\0') {
        return Err(PathError::Nul(name.to_string()));
    }
    let p = resolve(name);
    if p == "/" {
        return Err(PathError::Root(name.to_string()));
    }
    Ok(p)
}

/// Normalizes a folder for use as a key prefix: `/` becomes `""`, `a/b/` becomes `/a/b`.
pub fn folder(name: &str) -> String {
    let p = resolve(name);
    if p == "/" {
        String::new()
    } else {
        p
    }
}

/// The parent folder of a normalized path (`/a/b` -> `/a`, `/a` -> `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Whether normalized `path` is `folder` itself or lies below it (`folder` as from [`folder`]).
pub fn is_under(path: &str, folder: &str) -> bool {
    folder.is_empty()
        || path == folder
        || (path.len() > folder.len()
            && path.starts_with(folder)
            && path.as_bytes()[folder.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_or_root_names_a_file_unless_root() {
        assert_eq!(file_or_root("/").unwrap(), None);
        assert_eq!(file_or_root("a/./b/").unwrap(), Some("/a/b".to_string()));
        assert!(file_or_root("/a\0").is_err());
    }
    use proptest::prelude::*;

    #[test]
    fn examples_from_formats_doc() {
        assert_eq!(normalize("a/b/").unwrap(), "/a/b");
        assert_eq!(normalize("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(normalize("\\x").unwrap(), "/x");
        assert_eq!(normalize("//a//b").unwrap(), "/a/b");
        assert_eq!(normalize("../../x").unwrap(), "/x");
        assert!(matches!(normalize("/"), Err(PathError::Root(_))));
        assert!(matches!(normalize("a/.."), Err(PathError::Root(_))));
        assert!(normalize("a\0b").is_err());
        assert_eq!(folder("/"), "");
        assert_eq!(folder("a/b/"), "/a/b");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert!(is_under("/a/b", "/a"));
        assert!(!is_under("/ab", "/a"));
        assert!(is_under("/x", ""));
    }

    proptest! {
        #[test]
        fn idempotent(s in "[a-z./\\\\]{0,20}") {
            let r = resolve(&s);
            prop_assert_eq!(resolve(&r), r.clone());
            prop_assert!(r.starts_with('/'));
            prop_assert!(r == "/" || !r.ends_with('/'));
            prop_assert!(!r.contains("//"));
        }
    }
}
