use clap::Parser;
use parlor_loadtest::{run, Args, Scenario};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Scenario::Chart(c) = &args.scenario {
        return match parlor_loadtest::chart::run(c) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("parlor-loadtest chart: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().expect("tokio runtime");
    let json = args.json;
    let svg = args.svg.clone();
    match rt.block_on(run(args)) {
        Ok(report) => {
            if json {
                eprint!("{}", report.table());
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serialises")
                );
            } else {
                print!("{}", report.table());
            }
            if let Some(path) = svg {
                if let Err(e) = report.write_svg(&path) {
                    eprintln!("cannot write {}: {e}", path.display());
                }
            }
            // Exit before the runtime drops thousands of sockets one by one.
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("parlor-loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
