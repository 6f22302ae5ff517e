//! The `copy` action.
