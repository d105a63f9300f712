//! The job worker with a small context and no HTTP: a store on a temp SQLite file, a worker with
//! a scripted handler of the test's own, jobs written straight into the queue. Covers the retry
//! with backoff after a failure on lorewire's side, the attempt cap and the give-up, the burial
//! of a job whose give-up fails and of a job of a kind no handler runs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use lorewire::core::clock::{Clock, SystemClock};
use lorewire::core::config::Config;
use lorewire::core::metrics::Metrics;
use lorewire::jobs::{Claim, JobHandler, JobKind, JobResult, JobWorker, Outcome};
use lorewire::store::jobs::{self, JobRow};
use lorewire::store::schema::jobs as jobs_t;
use lorewire::store::{Store, StoreError};

use crate::common::{eventually, Db, TestDb};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Run(u32),
    GiveUp(u32),
}

/// Fails its first `failing_runs` attempts on lorewire's side (or panics in them, when
/// `panics`), then finishes the job; its give-up finishes the job too, unless `give_up_fails`.
struct Scripted {
    store: Store,
    failing_runs: u32,
    panics: bool,
    give_up_fails: bool,
    calls: Rc<RefCell<Vec<(Call, Instant)>>>,
}

impl Scripted {
    fn finish(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        async move {
            let (id, worker) = (claim.job_id, claim.worker.clone());
            let mine = self.store.write(move |c| jobs::complete(c, id, &worker)).await?;
            Ok(if mine { Outcome::Done } else { Outcome::TakenOver })
        }
        .boxed_local()
    }
}

impl JobHandler for Scripted {
    fn kind(&self) -> JobKind {
        JobKind::Content
    }

    fn run(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        self.calls.borrow_mut().push((Call::Run(claim.attempt), Instant::now()));
        if claim.attempt <= self.failing_runs && self.panics {
            return async move { panic!("attempt {} panics", claim.attempt) }.boxed_local();
        }
        if claim.attempt <= self.failing_runs {
            let attempt = claim.attempt;
            return async move { Err(StoreError::Corrupt(format!("attempt {attempt} fails"))) }.boxed_local();
        }
        self.finish(claim)
    }

    fn give_up(self: Rc<Self>, claim: Claim) -> LocalBoxFuture<'static, JobResult> {
        self.calls.borrow_mut().push((Call::GiveUp(claim.attempt), Instant::now()));
        if self.give_up_fails {
            return async { Err(StoreError::Corrupt("no final state either".into())) }.boxed_local();
        }
        self.finish(claim)
    }
}

struct Rig {
    _db: TestDb,
    store: Store,
    calls: Rc<RefCell<Vec<(Call, Instant)>>>,
}

impl Rig {
    fn calls(&self) -> Vec<Call> {
        self.calls.borrow().iter().map(|(call, _)| *call).collect()
    }

    async fn jobs(&self) -> Vec<JobRow> {
        self.store.run(|c| Ok(jobs_t::table.order(jobs_t::id).load(c)?)).await.unwrap()
    }

    async fn until_no_job_waits(&self) {
        eventually("the queue to empty", || async {
            self.jobs().await.iter().all(|j| j.status == "dead").then_some(())
        })
        .await;
    }
}

/// Writes `queued` jobs (kind, attempts already spent), then starts a worker with the scripted
/// handler.
async fn rig(queued: &[(JobKind, i32)], max_attempts: u32, failing_runs: u32, give_up_fails: bool) -> Rig {
    rig_panicking(queued, max_attempts, failing_runs, false, give_up_fails).await
}

async fn rig_panicking(
    queued: &[(JobKind, i32)],
    max_attempts: u32,
    failing_runs: u32,
    panics: bool,
    give_up_fails: bool,
) -> Rig {
    let db = TestDb::new(Db::Sqlite);
    let store = Store::connect(&db.url).expect("test store");
    store.migrate().expect("migrations");
    let now = SystemClock.now_naive();
    for (target, &(kind, attempts)) in (1..).zip(queued) {
        store
            .write(move |c| {
                jobs::enqueue(c, kind, target, 0, now)?;
                let this = jobs_t::table.filter(jobs_t::target_id.eq(target));
                Ok(diesel::update(this).set(jobs_t::attempts.eq(attempts)).execute(c)?)
            })
            .await
            .unwrap();
    }
    let mut config = Config::with_database(&db.url);
    config.retry_base = Duration::from_millis(150);
    config.max_attempts = max_attempts;
    config.job_poll = Duration::from_millis(50);
    let calls = Rc::new(RefCell::new(Vec::new()));
    let handler = Scripted { store: store.clone(), failing_runs, panics, give_up_fails, calls: calls.clone() };
    let worker = JobWorker::new(store.clone(), Arc::new(SystemClock), Arc::new(Metrics::new()), &config, "w1".into());
    let _ = worker.register(handler).start_with_intake();
    Rig { _db: db, store, calls }
}

#[actix_web::test]
async fn a_failed_attempt_is_retried_after_a_doubling_backoff() {
    let rig = rig(&[(JobKind::Content, 0)], 5, 2, false).await;
    rig.until_no_job_waits().await;
    assert!(rig.jobs().await.is_empty(), "the third attempt finished the job");
    assert_eq!(rig.calls(), [Call::Run(1), Call::Run(2), Call::Run(3)]);
    let at: Vec<Instant> = rig.calls.borrow().iter().map(|(_, at)| *at).collect();
    // Retry n waits at least half of 150 ms x 2^(n-1).
    let (first, second) = (at[1] - at[0], at[2] - at[1]);
    assert!(first >= Duration::from_millis(75), "first retry after {first:?}");
    assert!(second >= Duration::from_millis(150), "second retry after {second:?}");
}

#[actix_web::test]
async fn the_last_failed_attempt_gives_the_target_its_final_state() {
    let rig = rig(&[(JobKind::Content, 0)], 3, u32::MAX, false).await;
    rig.until_no_job_waits().await;
    assert!(rig.jobs().await.is_empty());
    assert_eq!(rig.calls(), [Call::Run(1), Call::Run(2), Call::Run(3), Call::GiveUp(3)]);
}

#[actix_web::test]
async fn a_job_back_with_its_attempts_spent_is_given_up_without_a_run() {
    // A worker died on the last attempt: the takeover is the fourth claim of three.
    let rig = rig(&[(JobKind::Content, 3)], 3, 0, false).await;
    rig.until_no_job_waits().await;
    assert!(rig.jobs().await.is_empty());
    assert_eq!(rig.calls(), [Call::GiveUp(4)]);
}

#[actix_web::test]
async fn a_job_whose_give_up_fails_is_buried_and_never_claimed_again() {
    let rig = rig(&[(JobKind::Content, 0)], 1, u32::MAX, true).await;
    rig.until_no_job_waits().await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.calls(), [Call::Run(1), Call::GiveUp(1)]);
    let jobs = rig.jobs().await;
    assert_eq!(jobs.len(), 1, "a buried job is kept");
    assert_eq!(jobs[0].status, "dead");
    assert_eq!(jobs[0].last_error.as_deref(), Some("stored data is corrupt: no final state either"));
    assert_eq!(jobs[0].locked_by, None);
}

#[actix_web::test]
async fn a_job_of_a_kind_no_handler_runs_is_buried_and_the_others_still_run() {
    let rig = rig(&[(JobKind::Mood, 0), (JobKind::Content, 0)], 3, 0, false).await;
    rig.until_no_job_waits().await;
    assert_eq!(rig.calls(), [Call::Run(1)], "only the content job reached the handler");
    let jobs = rig.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].kind.as_str(), jobs[0].status.as_str()), ("mood", "dead"));
    assert_eq!(jobs[0].last_error.as_deref(), Some("no handler for job kind `mood`"));
}

/// A handler that panics is a failure on lorewire's side like any other: the attempt is retried
/// after its backoff, the worker keeps running, and the other jobs are not held up.
#[actix_web::test]
async fn a_panicking_attempt_is_retried_and_the_worker_goes_on() {
    let rig = rig_panicking(&[(JobKind::Content, 0), (JobKind::Content, 0)], 3, 1, true, false).await;
    rig.until_no_job_waits().await;
    assert!(rig.jobs().await.is_empty(), "both jobs finished on their second attempt");
    let mut calls = rig.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(calls, [Call::Run(1), Call::Run(1), Call::Run(2), Call::Run(2)]);
}
