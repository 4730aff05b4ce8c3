use worker_api_gateway::{config::Settings, startup::Application, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(&settings);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            telemetry.shutdown();
            return std::process::ExitCode::FAILURE;
        }
    };
    let stop = app.stop_token();
    tokio::spawn(async move {
        worker_api_gateway::startup::shutdown_signal().await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    let code = match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped with an error");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
