//! Process entry: everything lives in the library (`batch_gateway::cli`).

fn main() -> std::process::ExitCode {
    batch_gateway::cli::main()
}
