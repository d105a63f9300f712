//! [`Kept`]: a statement the connection keeps prepared, keyed by its SQL text.

/// A statement whose prepared form the connection may keep, keyed by its SQL text. Diesel
/// prepares every UPDATE anew, because one changeset type can make several SQL texts (an
/// `Option` field leaves its column out); keyed by the text, each of them is safe to keep. For
/// the UPDATEs every content item runs: `diesel::update(...).set(...)` inside, run on the
/// backend's own connection ([`crate::on_backend!`]).
#[derive(Debug, Clone, Copy)]
pub struct Kept<Q>(pub Q);

impl<Q> diesel::query_builder::QueryId for Kept<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Kept<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, DB> diesel::query_builder::QueryFragment<DB> for Kept<Q>
where
    Q: diesel::query_builder::QueryFragment<DB>,
    DB: diesel::backend::Backend,
{
    fn walk_ast<'b>(&'b self, pass: diesel::query_builder::AstPass<'_, 'b, DB>) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // The statement cache keys this statement by its SQL text (no static query id above).
    fn is_safe_to_cache_prepared(&self, _: &DB) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q, C> diesel::RunQueryDsl<C> for Kept<Q> {}
