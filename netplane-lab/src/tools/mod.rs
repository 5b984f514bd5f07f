//! Small programs for lab traffic, and the teaching guides' pictures.
pub mod diagrams;
pub mod whoami;
