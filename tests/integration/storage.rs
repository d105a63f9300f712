//! A database that refuses writes (here: PostgreSQL switched to read-only under the running
//! server): `/ready` turns 503, a write over REST answers 503 `unavailable`, and both recover
//! once the database takes writes again.

use diesel::{Connection, RunQueryDsl};
use serde_json::json;

use crate::common::{eventually, get_json, pg_admin_url, post_json, spawn_app, Db};

/// Makes the test's database read-only (or writable again) for every new connection, and cuts
/// the server's connections so its pool reconnects under the new default.
fn set_read_only(name: &str, on: bool) {
    let mut admin = diesel::PgConnection::establish(&pg_admin_url()).expect("admin connection");
    let value = if on { "on" } else { "off" };
    // Database names and settings cannot be bound as parameters.
    diesel::sql_query(format!("ALTER DATABASE {name} SET default_transaction_read_only = {value}"))
        .execute(&mut admin)
        .expect("alter database");
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .execute(&mut admin)
    .expect("terminate the server's connections");
}

#[actix_web::test]
async fn ready_turns_503_while_the_database_refuses_writes() {
    let app = spawn_app(Db::Postgres).await;
    let name = app.db.pg_name.clone().expect("a PostgreSQL database of its own");
    let token = app.player_token().await;
    let (status, body) = get_json(&app.url("/ready"), None).await;
    assert_eq!(status, 200, "{body}");

    set_read_only(&name, true);
    let body = eventually("/ready to say 503", || async {
        let (status, body) = get_json(&app.url("/ready"), None).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("refuses writes"), "{body}");

    // A request that stores something is refused as unavailable, not as an overload or a bug.
    let request = json!({"kind": "quest", "subject_id": 7, "context": {"character_name": "Ada"}});
    let (status, body) = post_json(&app.url("/api/content"), &token, &request).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    // Health is about the process, not the database.
    assert_eq!(get_json(&app.url("/health"), None).await.0, 200);

    set_read_only(&name, false);
    eventually("/ready to say 200 again", || async {
        (get_json(&app.url("/ready"), None).await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = post_json(&app.url("/api/content"), &token, &request).await;
    assert_eq!(status, 202, "{body}");
}

/// A small filesystem of a test's own (tmpfs), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `size` (e.g. "8m"); needs root, or sudo without a password.
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("mount point");
        let status = privileged("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "this test mounts a small tmpfs: it needs root or passwordless sudo");
        SmallDisk { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file until the disk has no room left.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path("filler")).expect("filler");
        let chunk = vec![7u8; 16 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        // The last partial blocks too.
        while filler.write_all(&chunk[..512]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = privileged("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn privileged(program: &str) -> std::process::Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new(program)
    } else {
        let mut sudo = std::process::Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    }
}

/// SQLite on a full disk: a write that only rewrites pages already allocated (the write probe's
/// own) still succeeds there, so readiness also allocates room beside the database. `/ready`
/// says 503 while the disk is full and 200 once it has room again, and writes go through again.
#[actix_web::test]
async fn sqlite_ready_turns_503_while_its_disk_is_full() {
    let disk = SmallDisk::mount("8m");
    let database = disk.path("lorewire.db").to_string_lossy().into_owned();
    let app = crate::common::spawn_with(crate::common::Setup::new(Db::Sqlite), |c| c.database_url = database).await;
    let token = app.player_token().await;
    let request =
        |subject_id: u64| json!({"kind": "quest", "subject_id": subject_id, "context": {"character_name": "Ada"}});
    assert_eq!(post_json(&app.url("/api/content"), &token, &request(1)).await.0, 202);
    assert_eq!(get_json(&app.url("/ready"), None).await.0, 200);

    disk.fill();
    let (status, body) = get_json(&app.url("/ready"), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    // The allocation fails first; once even the probe's own write fails, that is said instead.
    assert!(body["message"].as_str().unwrap().contains("refuses writes"), "{body}");
    assert_eq!(get_json(&app.url("/health"), None).await.0, 200);

    disk.free();
    let (status, body) = get_json(&app.url("/ready"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_json(&app.url("/api/content"), &token, &request(2)).await;
    assert_eq!(status, 202, "{body}");
}
