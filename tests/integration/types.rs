//! The TypeScript types of the browser client (`static/lorewire.d.ts`): `tsc --noEmit` over a
//! usage example (tests/browser/types/example.ts) whose `@ts-expect-error` lines must each be a
//! real error, so types that accept a wrong frame fail the check.

use std::path::Path;
use std::process::Command;

#[test]
fn client_types_check_against_the_usage_example() {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let tsc = browser.join("node_modules/.bin/tsc");
    assert!(tsc.exists(), "the type check needs typescript: (cd tests/browser && npm ci), or run scripts/test");
    let out = Command::new(&tsc)
        .args(["--noEmit", "--pretty", "false", "-p", "types"])
        .current_dir(&browser)
        .output()
        .expect("tsc runs (it needs node)");
    assert!(
        out.status.success(),
        "tsc found errors in static/lorewire.d.ts or its example:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
