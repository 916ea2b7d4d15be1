//! evlounge: EV lounge daemon. Data flows ingest → domain → outputs → http.

pub mod domain;
pub mod ingest;
pub mod outputs;
pub mod util;
