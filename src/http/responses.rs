//! The error answers many routes share, described once for the OpenAPI document: a handler
//! lists the sets that apply to it (`responses(..., AdminErrors, ReadErrors)`) beside its own
//! answers. Describes; never builds an answer (`api_error` does).

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::IntoResponses;

/// A JSON error answer (`{"error", "message"}`) with this description.
pub fn error(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

fn rows(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter().map(|(status, description)| ((*status).to_owned(), error(description))).collect()
}

const BUSY: (&str, &str) = ("429", "The database is busy");
const FAULT: (&str, &str) = ("500", "A fault on lorewire's side");

/// 401 and 403 of an `/admin/api/*` route.
pub struct AdminErrors;

impl IntoResponses for AdminErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        rows(&[("401", "No admin token"), ("403", "Wrong admin token")])
    }
}

/// 401 of an `/api/*` route.
pub struct PlayerErrors;

impl IntoResponses for PlayerErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        rows(&[("401", "No or unknown player token"), ("403", "The player is blocked")])
    }
}

/// 429, 503 and 500 of a route that reads the database.
pub struct ReadErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        rows(&[BUSY, ("503", "The database cannot take the request"), FAULT])
    }
}

/// 429, 503 and 500 of a route that writes to the database.
pub struct WriteErrors;

impl IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        rows(&[BUSY, ("503", "The database cannot take the request; nothing was stored"), FAULT])
    }
}

/// 500 of a route whose other failures are its own.
pub struct Fault;

impl IntoResponses for Fault {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        rows(&[FAULT])
    }
}
