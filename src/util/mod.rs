pub mod backoff;
pub mod mem;
pub mod secret;
pub mod time;
