use clap::Parser;

/// jemalloc returns freed memory to the system within seconds (its decay),
/// where glibc's malloc, with an arena per thread, keeps the high-water mark
/// of every burst: see docs/performance.md, "Memory under steady load".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = peregrine::cli::Cli::parse();
    if let Err(e) = peregrine::telemetry::init(&cli.log, cli.log_format) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    match peregrine::commands::run(cli) {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
