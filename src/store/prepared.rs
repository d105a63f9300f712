//! Statements the connection keeps prepared although Diesel would not: Diesel prepares every
//! UPDATE (and every upsert, `IN` list and insert with a defaultable value) again at each call,
//! because such a statement's SQL may change with its values (a changeset skipping `None`
//! fields). [`Prepared`] wraps one whose cache key is its SQL text and bind types, so a
//! statement is reused exactly when its SQL is the same; on the hot paths (a request, a job's
//! claim and end, the usage ledger) that saves SQLite parsing and planning every statement.
//!
//! Run one through the load path (`get_result(s)`, with a RETURNING clause for an UPDATE):
//! `execute` hands the connection a reference, and a reference walks the inner statement,
//! which says it may not be cached.
//!
//! Overriding `is_safe_to_cache_prepared` needs Diesel's
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes` feature (Cargo.lock pins
//! the version it is written against).

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// `query`, kept prepared by the connection under its SQL text.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(pub Q);

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the cache keys the statement by its SQL text and bind types, never by type.
impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for Prepared<Q> {}
