//! The site simulator: a deterministic model of chargers and a lounge (`model`), a publisher
//! that paces it to the wall clock or floods a broker for load tests (`publish`), and the
//! embedded broker `evlounge demo` runs (`broker`).

pub mod broker;
pub mod formats;
pub mod lounge;
pub mod model;
pub mod publish;
pub mod vehicles;

pub use broker::start_embedded_broker;
pub use formats::{SimFormat, Translator};
pub use model::{
    ChargerKind, ScriptedArrival, SessionTruth, SimCharger, SimConfig, SimMessage, SiteSim,
};
pub use publish::{run_simulate, run_simulate_with, sim_config, SimReport, SimulateOptions};
