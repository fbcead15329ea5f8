//! `cnirs-scale`: the simulated side of `make bench-scale` (bench/scale.sh starts etcd and the
//! real host, then runs this in the etcd netns). See docs/scale.md.
//!
//! Phases: start an agent loop per simulated host (threads; one watch stream each), wait until
//! every host is registered; fill (P pods per host through the overlay ADD, `SCALE_WORKERS` at
//! once, until done or the budget/memory guard stops it); churn (`SCALE_CHURN` pods replaced
//! per second for `SCALE_CHURN_S`); measure; write `scale.json`.

mod metrics;
mod params;
mod run;
mod sim;
mod track;

use std::process::ExitCode;

fn main() -> ExitCode {
    cni_core::logging::init_with_default("cnirs-scale", log::LevelFilter::Warn);
    let params = match params::Params::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cnirs-scale: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run::run(&params);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnirs-scale: {e}");
            ExitCode::from(1)
        }
    }
}
