//! The migration folders: diesel keys a migration by the version before the first `_` of its
//! folder, so two folders with one version (two branches' work merged) would run only one of
//! them; and both backends must have the same migrations.

use std::collections::BTreeMap;
use std::path::Path;

fn versions(backend: &str) -> BTreeMap<String, Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
    let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("the migrations folder") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let version = name.split('_').next().unwrap().replace('-', "");
        by_version.entry(version).or_default().push(name);
    }
    by_version
}

#[test]
fn every_migration_has_a_version_of_its_own_and_both_backends_the_same() {
    let sqlite = versions("sqlite");
    let postgres = versions("postgres");
    for (backend, found) in [("sqlite", &sqlite), ("postgres", &postgres)] {
        for (version, names) in found {
            assert_eq!(names.len(), 1, "{backend}: migrations share the version {version}: {names:?}");
        }
    }
    assert_eq!(sqlite, postgres, "the two backends' migrations differ");
}
