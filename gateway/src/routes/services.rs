//! Discoverable services (core spec 9): filled in by the discovery work.

use axum::Router;

use crate::AppState;

/// The discovery routes.
pub fn router() -> Router<AppState> {
    Router::new()
}
