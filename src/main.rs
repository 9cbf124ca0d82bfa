//! Process entry: everything lives in the library (`batch_gateway::cli`).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    batch_gateway::cli::main()
}
