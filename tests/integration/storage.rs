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
