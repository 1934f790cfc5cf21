//! The `enforcer` command.


use clap::Parser as _;
use enforcer::{admin, check, cli, daemon, exit, run};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = cli::Cli::parse();
    // `run --quiet` promises a quiet terminal: only errors from enforcer itself.
    let level = match &cli.command {
        cli::Command::Run(r) if r.quiet => "error",
        _ => cli.log.as_str(),
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let code = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt.block_on(dispatch(cli.command)).unwrap_or_else(|e| {
            eprintln!("enforcer: error: {e:#}");
            exit::for_error(&e)
        }),
        Err(e) => {
            eprintln!("enforcer: error: starting the async runtime: {e}");
            exit::ENFORCER_FAILED
        }
    };
    std::process::exit(code);
}

async fn dispatch(cmd: cli::Command) -> anyhow::Result<i32> {
    match cmd {
        cli::Command::Run(a) => run::run(a).await,
        cli::Command::Daemon(a) => daemon::daemon(a).await,
        cli::Command::Check(a) => check::check(a),
        cli::Command::Unpin(a) => daemon::unpin(a),
        cli::Command::Registry(a) => registry(a).await,
    }
}

/// `enforcer registry`: the running agent's endpoints.
async fn registry(a: cli::RegistryArgs) -> anyhow::Result<i32> {
    let r = admin::fetch_registryz(a.admin).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", admin::format_endpoint_table(&r));
    }
    Ok(0)
}
