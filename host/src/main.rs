use clap::Parser;

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
