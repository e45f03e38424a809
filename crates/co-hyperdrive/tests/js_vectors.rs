//! Interop check: regenerating the golden vectors with the pinned JavaScript packages gives
//! exactly the committed files, so the byte-compatibility tests compare against what
//! JavaScript Hyperbee/Hyperdrive really write today. Needs `npm ci --prefix js` (done by
//! `.ci/run`); it fails, never skips, when node or the packages are missing.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_vectors_match_the_javascript_generator() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let js = root.join("js");
    assert!(
        js.join("node_modules/hyperbee").is_dir(),
        "JavaScript peers are not installed: run `npm ci --prefix js` (bash .ci/run does it)"
    );
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .arg(js.join("gen-bee-vectors.js"))
        .arg(out.path())
        .status()
        .expect("node must be installed to run the interop tests");
    assert!(status.success(), "gen-bee-vectors.js failed");
    for name in ["bee.json", "drive.json"] {
        let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vectors")
                .join(name),
        )
        .unwrap();
        assert!(
            fresh == committed,
            "{name} differs from what the pinned JavaScript packages generate"
        );
    }
}
