//! The `enforcer` command.

use clap::Parser as _;
use enforcer::{admin, check, cli, confine, daemon, events::EventJson, exit, run, supervisor};
use tracing_subscriber::EnvFilter;

/// jemalloc: the proxy's small per-request allocations are cheaper than with glibc's malloc
/// (+5.6% requests/s in `cargo xtask bench proxy`), with the RSS still bounded (~39 MiB under load).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // The processes `run` starts from this binary (the init of the command's namespaces, the
    // supervisor) take over here, before any thread or runtime exists.
    confine::init::main_if_init();
    supervisor::main_if_supervisor();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        // --help and --version print to stdout and succeed; every usage error exits 125, the
        // status of enforcer's own failures, so it never looks like the command's exit status.
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::ENFORCER_FAILED } else { 0 });
        }
    };
    // `run --quiet` promises a quiet terminal: only errors from enforcer itself.
    let level = match (&cli.command, cli.log.as_deref()) {
        (cli::Command::Run(r), _) if r.quiet => "error",
        (_, Some(l)) => l,
        (cli::Command::Run(_), None) => "warn",
        (_, None) => "info",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enforcer: error: starting the async runtime: {e}");
            std::process::exit(exit::ENFORCER_FAILED);
        }
    };
    let code = rt.block_on(dispatch(cli.command)).unwrap_or_else(|e| {
        eprintln!("enforcer: error: {e:#}");
        exit::for_error(&e)
    });
    // Exit with the runtime still up: `dispatch` has drained what must finish (servers, upkeep,
    // watchers); dropping the runtime would instead shut its timers down under any task still
    // polled (a request handler, a resolver refresh), which then panics.
    std::process::exit(code);
}

async fn dispatch(cmd: cli::Command) -> anyhow::Result<i32> {
    match cmd {
        cli::Command::Run(a) => run::run(a).await,
        cli::Command::Daemon(a) => {
            cli::allow_cidr_warnings(&a.policy).iter().for_each(|w| tracing::warn!("{w}"));
            daemon::daemon(a).await
        }
        cli::Command::Check(a) => check::check(a),
        cli::Command::Unpin(a) if a.stale => supervisor::unpin_stale(),
        cli::Command::Unpin(a) => daemon::unpin(a),
        cli::Command::Registry(a) => registry(a).await,
        cli::Command::Events(a) => events(a).await,
        cli::Command::Suggest(a) => suggest(a).await,
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

/// `enforcer events`: the agent's recent denied/audited connections, optionally followed.
async fn events(a: cli::EventsArgs) -> anyhow::Result<i32> {
    let path = if a.follow { "/debug/events?follow=1" } else { "/debug/events" };
    let json = a.json;
    admin::client::stream_lines(a.admin, path, |line| {
        if line.is_empty() {
            return;
        }
        if json {
            println!("{line}");
        } else {
            match serde_json::from_str::<EventJson>(line) {
                Ok(e) if !e.line.is_empty() => {
                    let wl = e.workload.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                    let host = e.host.as_deref().map(|h| format!(" [{h}]")).unwrap_or_default();
                    println!("{}{host}{wl}", e.line);
                }
                Ok(e) => println!("{}", e.message),
                Err(_) => println!("{line}"),
            }
        }
    })
    .await?;
    Ok(0)
}

/// `enforcer suggest`: draft ServiceEntries from the agent's (or a file's) events.
async fn suggest(a: cli::SuggestArgs) -> anyhow::Result<i32> {
    let text = match &a.from {
        Some(f) => std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?,
        None => {
            let r = admin::client::request(a.admin, "GET", "/debug/events").await?;
            String::from_utf8_lossy(&r.body).into_owned()
        }
    };
    let events: Vec<EventJson> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let window = match &a.since {
        Some(s) => enforcer::suggest::Window::parse_since(s, now).map_err(anyhow::Error::msg)?,
        None => enforcer::suggest::Window::AuditPeriod,
    };
    // The live registry, to flag drafted addresses it already holds (not required with --from).
    let live = match admin::fetch_registryz(a.admin).await {
        Ok(r) => Some(r),
        Err(e) if a.from.is_none() => return Err(e.into()),
        Err(_) => None,
    };
    print!("{}", enforcer::suggest::draft(window.select(&events), &a.namespace, live.as_ref()));
    Ok(0)
}
