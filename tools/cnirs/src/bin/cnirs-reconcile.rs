//! `cnirs-reconcile [--check]`: the name before `cnirs`, kept for existing units and scripts.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    netbase::logging::init_with_default("cnirs-reconcile", log::LevelFilter::Info);
    cnirs::reconcile::run(&args)
}
