//! evlounge: EV lounge daemon. Data flows ingest → domain → outputs → http.

pub mod domain;
pub mod outputs;
pub mod util;
pub mod config;
pub mod ingest;
