//! SQL functions Diesel's DSL has no name for, declared once for the store's statements.

use diesel::sql_types::{BigInt, Nullable};

diesel::define_sql_function! {
    /// `coalesce(a, b)`: `a` unless it is NULL, else `b`.
    fn coalesce(a: Nullable<BigInt>, b: Nullable<BigInt>) -> Nullable<BigInt>;
}
