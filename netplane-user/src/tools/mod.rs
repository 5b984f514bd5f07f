//! Small programs for lab traffic.
pub mod whoami;
