//! om end-to-end test helpers
