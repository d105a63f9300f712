//! The circuit breaker's state machine, driven by its own messages on a manual clock with a
//! store on a temp SQLite file: no server, no upstream. Closed -> open after N failures within
//! the window, open -> half-open after the reset, one trial at a time, what the trial's outcome
//! does, what never counts, and the state restored from its record.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use chrono::{DateTime, TimeDelta, Utc};
use lorewire::core::clock::ManualClock;
use lorewire::core::metrics::Metrics;
use lorewire::core::provider::Provider;
use lorewire::llm::circuit::{
    Acquire, CircuitBreaker, CircuitSettings, CircuitSnapshot, CircuitState, GetSnapshot, Outcome, Permit, Refusal,
    Report, Reset,
};
use lorewire::store::llm_config::{self, CircuitRecord};
use lorewire::store::Store;

use crate::common::{eventually, Db, TestDb};

const SETTINGS: CircuitSettings =
    CircuitSettings { failures: 3, window: Duration::from_secs(60), reset: Duration::from_secs(30) };
const CALL: Permit = Permit::Call { probe: false };
const PROBE: Permit = Permit::Call { probe: true };
const OPEN: Permit = Permit::Refuse(Refusal::CircuitOpen);

struct Rig {
    _db: TestDb,
    store: Store,
    clock: ManualClock,
    breaker: Addr<CircuitBreaker>,
}

fn closed() -> CircuitRecord {
    CircuitRecord {
        state: "closed".into(),
        failures: "[]".into(),
        opened_at: None,
        resets_at: None,
        retry_after_until: None,
    }
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

async fn rig(record: CircuitRecord) -> Rig {
    let db = TestDb::new(Db::Sqlite);
    let store = Store::connect(&db.url).expect("test store");
    store.migrate().expect("migrations");
    let now = start().naive_utc();
    store.write(move |c| llm_config::seed(c, Provider::Anthropic, "m", "http://127.0.0.1:1", None, now)).await.unwrap();
    let clock = ManualClock::new(start());
    let breaker =
        CircuitBreaker::restore(SETTINGS, &record, Arc::new(clock.clone()), store.clone(), Arc::new(Metrics::new()))
            .start();
    Rig { _db: db, store, clock, breaker }
}

impl Rig {
    async fn acquire(&self) -> Permit {
        self.breaker.send(Acquire).await.unwrap()
    }
    async fn report(&self, probe: bool, outcome: Outcome) {
        self.breaker.send(Report { probe, outcome }).await.unwrap()
    }
    async fn fail(&self, times: usize) {
        for _ in 0..times {
            self.report(false, Outcome::Failure).await;
        }
    }
    async fn snapshot(&self) -> CircuitSnapshot {
        self.breaker.send(GetSnapshot).await.unwrap()
    }
    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
    async fn open_it(&self) {
        self.fail(SETTINGS.failures as usize).await;
        assert_eq!(self.snapshot().await.state, CircuitState::Open);
    }
    /// The stored state once it reads `state`.
    async fn stored(&self, state: &'static str) -> CircuitRecord {
        eventually(&format!("the stored circuit to be {state}"), || async {
            let row = self.store.run(llm_config::get).await.unwrap().unwrap();
            (row.circuit_state == state).then(|| row.circuit())
        })
        .await
    }
}

#[actix_web::test]
async fn n_failures_within_the_window_open_the_circuit() {
    let rig = rig(closed()).await;
    rig.fail(2).await;
    assert_eq!(rig.acquire().await, CALL, "two failures of three");
    assert_eq!(rig.snapshot().await.failures, 2);
    rig.advance(10);
    rig.fail(1).await;
    assert_eq!(rig.acquire().await, OPEN);
    let snap = rig.snapshot().await;
    let opened = start() + TimeDelta::seconds(10);
    assert_eq!(snap.state, CircuitState::Open);
    assert_eq!((snap.opened_at, snap.resets_at), (Some(opened), Some(opened + TimeDelta::seconds(30))));
    // Persisted: a restart resumes open.
    let stored = rig.stored("open").await;
    assert_eq!(stored.resets_at, Some((opened + TimeDelta::seconds(30)).naive_utc()));
}

#[actix_web::test]
async fn failures_older_than_the_window_are_forgotten() {
    let rig = rig(closed()).await;
    rig.fail(2).await;
    rig.advance(60);
    rig.fail(1).await;
    assert_eq!(rig.acquire().await, CALL);
    assert_eq!(rig.snapshot().await.failures, 1);
    rig.advance(59);
    rig.fail(1).await;
    assert_eq!(rig.acquire().await, CALL, "two failures in the last minute");
    rig.fail(1).await;
    assert_eq!(rig.acquire().await, OPEN);
}

#[actix_web::test]
async fn after_the_reset_one_trial_at_a_time_goes_through() {
    let rig = rig(closed()).await;
    rig.open_it().await;
    rig.advance(29);
    assert_eq!(rig.acquire().await, OPEN, "before the reset");
    rig.advance(1);
    assert_eq!(rig.acquire().await, PROBE);
    assert_eq!(rig.snapshot().await.state, CircuitState::HalfOpen);
    assert_eq!(rig.acquire().await, OPEN, "a second trial while the first is out");
    // A trial that never reached the provider frees the slot and says nothing.
    rig.report(true, Outcome::NotCalled).await;
    assert_eq!(rig.snapshot().await.state, CircuitState::HalfOpen);
    assert_eq!(rig.acquire().await, PROBE);
    rig.stored("half_open").await;
}

#[actix_web::test]
async fn a_trial_that_succeeds_closes_the_circuit_and_one_that_fails_opens_it_again() {
    let rig = rig(closed()).await;
    rig.open_it().await;
    rig.advance(30);
    assert_eq!(rig.acquire().await, PROBE);
    rig.report(true, Outcome::Failure).await;
    let snap = rig.snapshot().await;
    let reopened = start() + TimeDelta::seconds(30);
    assert_eq!((snap.state, snap.opened_at), (CircuitState::Open, Some(reopened)));
    assert_eq!(snap.resets_at, Some(reopened + TimeDelta::seconds(30)));
    assert_eq!(rig.acquire().await, OPEN);

    rig.advance(30);
    assert_eq!(rig.acquire().await, PROBE);
    rig.report(true, Outcome::Success).await;
    let snap = rig.snapshot().await;
    assert_eq!((snap.state, snap.failures, snap.opened_at, snap.resets_at), (CircuitState::Closed, 0, None, None));
    assert_eq!(rig.acquire().await, CALL);
    rig.stored("closed").await;
}

#[actix_web::test]
async fn a_trial_the_provider_rejects_or_rate_limits_closes_the_circuit() {
    for outcome in [Outcome::Rejected, Outcome::RateLimited(Some(Duration::from_secs(2)))] {
        let breaker = rig(closed()).await;
        breaker.open_it().await;
        breaker.advance(30);
        assert_eq!(breaker.acquire().await, PROBE);
        breaker.report(true, outcome).await;
        assert_eq!(breaker.snapshot().await.state, CircuitState::Closed, "{outcome:?}");
    }
}

#[actix_web::test]
async fn rejected_and_rate_limited_calls_never_count_and_a_429_holds_calls_back() {
    let rig = rig(closed()).await;
    for _ in 0..5 {
        rig.report(false, Outcome::Rejected).await;
        rig.report(false, Outcome::RateLimited(Some(Duration::from_secs(2)))).await;
        rig.report(false, Outcome::NotCalled).await;
    }
    let snap = rig.snapshot().await;
    assert_eq!((snap.state, snap.failures), (CircuitState::Closed, 0));
    assert_eq!(snap.retry_after_until, Some(start() + TimeDelta::seconds(2)));
    assert_eq!(rig.acquire().await, Permit::Refuse(Refusal::RateLimited));
    rig.advance(2);
    assert_eq!(rig.acquire().await, CALL);
    assert_eq!(rig.snapshot().await.retry_after_until, None);
    // A 429 naming no wait holds calls back for 5 s.
    rig.report(false, Outcome::RateLimited(None)).await;
    rig.advance(4);
    assert_eq!(rig.acquire().await, Permit::Refuse(Refusal::RateLimited));
    rig.advance(1);
    assert_eq!(rig.acquire().await, CALL);
}

#[actix_web::test]
async fn failures_of_calls_begun_before_it_opened_do_not_move_it_again() {
    let rig = rig(closed()).await;
    rig.open_it().await;
    let before = rig.snapshot().await;
    rig.advance(10);
    rig.fail(3).await;
    assert_eq!(rig.snapshot().await, before);
}

#[actix_web::test]
async fn the_admin_reset_closes_it_and_lifts_a_rate_limit() {
    let rig = rig(closed()).await;
    rig.report(false, Outcome::RateLimited(Some(Duration::from_secs(60)))).await;
    rig.open_it().await;
    let snap = rig.breaker.send(Reset).await.unwrap();
    assert_eq!((snap.state, snap.failures, snap.retry_after_until), (CircuitState::Closed, 0, None));
    assert_eq!(rig.acquire().await, CALL);
}

#[actix_web::test]
async fn a_stored_open_circuit_resumes_open_until_its_reset() {
    let opened = start() - TimeDelta::seconds(10);
    let record = CircuitRecord {
        state: "open".into(),
        failures: serde_json::to_string(&[opened; 3]).unwrap(),
        opened_at: Some(opened.naive_utc()),
        resets_at: Some((opened + TimeDelta::seconds(30)).naive_utc()),
        retry_after_until: None,
    };
    let rig = rig(record).await;
    assert_eq!(rig.acquire().await, OPEN);
    let snap = rig.snapshot().await;
    assert_eq!((snap.state, snap.opened_at), (CircuitState::Open, Some(opened)));
    rig.advance(20);
    assert_eq!(rig.acquire().await, PROBE);
}

#[actix_web::test]
async fn a_stored_half_open_circuit_lets_a_trial_through_at_once() {
    // The trial in flight when the process stopped will never report.
    let record = CircuitRecord { state: "half_open".into(), ..closed() };
    let rig = rig(record).await;
    assert_eq!(rig.acquire().await, PROBE);
    assert_eq!(rig.acquire().await, OPEN);
}

#[actix_web::test]
async fn stored_failures_still_count_and_a_corrupt_record_resumes_closed() {
    let recent = serde_json::to_string(&[start() - TimeDelta::seconds(5); 2]).unwrap();
    let stored = rig(CircuitRecord { failures: recent, ..closed() }).await;
    assert_eq!(stored.snapshot().await.failures, 2);
    stored.fail(1).await;
    assert_eq!(stored.acquire().await, OPEN, "two stored failures and a new one");

    let corrupt = CircuitRecord { state: "sideways".into(), failures: "not json".into(), ..closed() };
    let resumed = rig(corrupt).await;
    let snap = resumed.snapshot().await;
    assert_eq!((snap.state, snap.failures), (CircuitState::Closed, 0));
    assert_eq!(resumed.acquire().await, CALL);
}
