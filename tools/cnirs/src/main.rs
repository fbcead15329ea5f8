//! `cnirs`: the suite's admin tool. One module per subcommand (see the library).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cnirs::main(&args)
}
