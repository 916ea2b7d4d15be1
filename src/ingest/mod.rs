//! MQTT in: the event loop, routing, and decoders turning payloads into domain inputs.

pub mod decode;
