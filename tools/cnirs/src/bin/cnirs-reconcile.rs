//! `cnirs-reconcile [--check]`: the name before `cnirs`, kept for existing units and scripts.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cnirs::logging::init("cnirs-reconcile");
    cnirs::reconcile::run(&args)
}
