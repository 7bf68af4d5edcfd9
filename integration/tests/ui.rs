//! The web UI in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which `scripts/browser.sh` installs), against a real
//! dispatcher, workers, RabbitMQ and PostgreSQL. Each test has its own browser.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use opflow_integration::{Env, http, http_text, parse_summary, wait_for};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(60);

/// A headless Chromium and the chromedriver that drives it; both end when dropped.
struct Browser {
    client: Client,
    _driver: Child,
}

/// `POST /session/{id}/se/log`: what the page wrote to the browser's console (chromedriver
/// keeps it with `goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let driver = std::env::var("OPFLOW_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("OPFLOW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        for (what, path) in [("chromedriver", &driver), ("chromium", &chromium)] {
            if !std::path::Path::new(path).exists() {
                bail!(
                    "{what} is not at {path}: `scripts/browser.sh` installs Debian's chromium and chromium-driver \
                     (or set OPFLOW_CHROMEDRIVER and OPFLOW_CHROMIUM)"
                );
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {driver}"))?;
        let webdriver = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", DEADLINE, || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ()))
        })
        .await?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions"],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .context("starting a Chromium session")?;
        Ok(Self { client, _driver: driver })
    }

    /// Errors the pages so far wrote to the console (failed scripts, refused resources,
    /// broken policies): each `SEVERE` entry's message.
    async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let log = self.client.issue_cmd(BrowserLog).await?;
        Ok(log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// The text of the first element matching `css`, or `None` when there is none.
    async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Ok(Some(element.text().await?)),
            Err(error) if error.is_no_such_element() => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The run page's status, as its label says (`data-status`).
    async fn run_status(&self) -> anyhow::Result<String> {
        let label = self.client.find(Locator::Css("[data-run-status]")).await?;
        Ok(label.attr("data-status").await?.unwrap_or_default())
    }

    /// Signs in on `/login` with `token`, then opens `next`.
    async fn sign_in(&self, api: &str, token: &str, next: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("http://{api}{next}")).await?;
        let url = self.client.current_url().await?;
        assert_eq!(url.path(), "/login", "a browser without a session is sent to sign in");
        self.client.find(Locator::Id("token")).await?.send_keys(token).await?;
        self.client.find(Locator::Css("form.login button[type=submit]")).await?.click().await?;
        wait_for("the page after signing in", DEADLINE, || async {
            let url = self.client.current_url().await?;
            Ok((url.path() != "/login").then_some(()))
        })
        .await?;
        Ok(())
    }

    async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}

/// Submits `yaml` with the CLI; the run id.
async fn submit(env: &Env, name: &str, yaml: &str) -> anyhow::Result<String> {
    let plan = env.plan_file(name, yaml)?;
    let run = parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?)?;
    Ok(run["run_id"].as_str().context("run_id")?.to_owned())
}

async fn run_status(env: &Env, run: &str, token: Option<&str>) -> anyhow::Result<String> {
    let (_, body) = http(&env.api_addr, "GET", &format!("/v1/runs/{run}"), token, None).await?;
    Ok(body["status"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_run_page_shows_its_bars_moving_without_a_reload_and_ends_succeeded() -> anyhow::Result<()> {
    let env = Env::new("ui_live").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let run = submit(
        &env,
        "live",
        "name: live\nassets:\n  - name: work\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 40}}\n    \
         config: {sleep_ms: 150}\n  - name: report\n    op: noop@1.1.0\n    deps: [work]\n",
    )
    .await?;
    let browser = Browser::start().await?;
    browser.client.goto(&format!("http://{}/runs/{run}", env.api_addr)).await?;
    // A mark on the page: gone if the page were reloaded.
    browser.client.execute("window.opflowMark = 'first load'; return null;", vec![]).await?;
    let first = browser.text("#run-bar-text").await?.context("the run's bar text")?;
    let first_width = browser
        .client
        .execute(
            "return document.querySelector('tr[data-asset=\"0\"] [data-part=succeeded]').style.width;",
            vec![],
        )
        .await?;
    // The bar moves while the run runs ...
    let moved = wait_for("the run's bar to move", DEADLINE, || async {
        let now = browser.text("#run-bar-text").await?.unwrap_or_default();
        Ok((now != first && browser.run_status().await? == "running").then_some(now))
    })
    .await?;
    assert!(moved.contains("succeeded"), "{moved}");
    // ... and the page ends `succeeded`, all without a reload.
    wait_for("the page to say the run succeeded", DEADLINE, || async {
        Ok((browser.run_status().await? == "succeeded").then_some(()))
    })
    .await?;
    let mark = browser.client.execute("return window.opflowMark || null;", vec![]).await?;
    assert_eq!(mark, json!("first load"), "the page was not reloaded");
    let text = browser.text("#run-bar-text").await?.unwrap_or_default();
    assert_eq!(text, "41 of 41 finished: 41 succeeded", "first: {first}");
    let last_width = browser
        .client
        .execute(
            "return document.querySelector('tr[data-asset=\"0\"] [data-part=succeeded]').style.width;",
            vec![],
        )
        .await?;
    assert_eq!(last_width, json!("100%"), "the asset's bar filled from {first_width}");
    assert!(
        browser.text("#cancel-run").await?.is_none()
            || !browser.client.find(Locator::Id("cancel-run")).await?.is_displayed().await?,
        "no cancel once ended"
    );
    assert_eq!(run_status(&env, &run, None).await?, "succeeded");

    // Every main page renders, keyboard first: the skip link is the first thing focused.
    for path in
        ["/", "/assets", "/assets/work", "/ops", &format!("/runs/{run}"), &format!("/runs/{run}/steps/0")]
    {
        browser.client.goto(&format!("http://{}{path}", env.api_addr)).await?;
        let heading = browser.text("main h1").await?.unwrap_or_default();
        assert!(!heading.is_empty(), "{path} has a heading");
    }
    browser.client.execute("document.activeElement.blur(); return null;", vec![]).await?;
    browser.client.active_element().await?.send_keys("\u{E004}").await?; // Tab
    let focused = browser.client.execute("return document.activeElement.className;", vec![]).await?;
    assert_eq!(focused, json!("skip"), "Tab reaches the skip link first");
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await
}

#[tokio::test]
async fn cancel_from_the_page_stops_the_run() -> anyhow::Result<()> {
    let env = Env::new("ui_cancel").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let run = submit(
        &env,
        "slow",
        "name: slow\nassets:\n  - name: slow\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 100}}\n    \
         config: {sleep_ms: 500}\n",
    )
    .await?;
    let browser = Browser::start().await?;
    browser.client.goto(&format!("http://{}/runs/{run}", env.api_addr)).await?;
    browser.client.find(Locator::Id("cancel-run")).await?.click().await?;
    wait_for("the page to say the run is canceled", DEADLINE, || async {
        browser.client.refresh().await?;
        Ok((browser.run_status().await? == "canceled").then_some(()))
    })
    .await?;
    assert_eq!(run_status(&env, &run, None).await?, "canceled");
    let (_, body) = http(&env.api_addr, "GET", &format!("/v1/runs/{run}"), None, None).await?;
    assert!(body["steps"]["canceled"].as_i64().unwrap_or(0) > 0, "{body}");
    assert!(browser.text("#cancel-run").await?.is_none(), "no cancel button on a canceled run");
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await
}

#[tokio::test]
async fn a_failed_steps_error_is_one_click_away() -> anyhow::Result<()> {
    let env = Env::new("ui_failed").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let run = submit(
        &env,
        "failing",
        "name: failing\nassets:\n  - name: fine\n    op: noop@1.1.0\n  - name: broken\n    op: noop@1.1.0\n    \
         deps: [fine]\n    config: {fail: fatal}\n",
    )
    .await?;
    wait_for("the run to fail", DEADLINE, || async {
        Ok((run_status(&env, &run, None).await? == "failed").then_some(()))
    })
    .await?;
    let browser = Browser::start().await?;
    browser.client.goto(&format!("http://{}/runs/{run}", env.api_addr)).await?;
    assert_eq!(browser.run_status().await?, "failed");
    browser.client.find(Locator::Css("ul.failures a")).await?.click().await?;
    let error = wait_for("the step page", DEADLINE, || async { browser.text("#step-error").await }).await?;
    assert!(error.contains("failing as configured (fail: fatal)"), "{error}");
    let heading = browser.text("main h1").await?.unwrap_or_default();
    assert!(heading.contains("Step 1 of broken") && heading.contains("failed"), "{heading}");
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await
}

#[tokio::test]
async fn a_reader_sees_no_cancel_button_and_the_server_refuses_it_anyway() -> anyhow::Result<()> {
    let env = Env::new("ui_reader").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let _worker = env.spawn_worker("noop")?;
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let reader = token(env.opflow_ok(&["tokens", "create", "reader", "--scope", "read"]).await?);
    let submitter = token(env.opflow_ok(&["tokens", "create", "pipeline", "--scope", "submit"]).await?);
    let plan = "name: slow\nassets:\n  - name: slow\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 100}}\n    \
                config: {sleep_ms: 500}\n";
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&submitter), Some(&json!({ "plan": plan }))).await?;
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().context("run_id")?.to_owned();

    // Without a session, pages send the browser to sign in; the session never opens the API.
    let (status, _) = http_text(&api, "GET", &format!("/runs/{run}"), None, None).await?;
    assert_eq!(status, 303, "a page without a session redirects to /login");
    let browser = Browser::start().await?;
    browser.sign_in(&api, &reader, &format!("/runs/{run}")).await?;
    assert_eq!(browser.client.current_url().await?.path(), format!("/runs/{run}"));
    assert_eq!(browser.run_status().await?, "running");
    assert!(browser.text("#cancel-run").await?.is_none(), "a reader sees no cancel button");
    assert!(browser.text("#rerun").await?.is_none(), "nor a re-run button");
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    // The reader's browser posts the cancel form anyway: refused (which the console notes).
    let answer: Value = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(location.pathname + '/cancel', {method: 'POST'}).then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await?;
    assert_eq!(answer, json!(403), "the server refuses a reader's cancel");
    let errors = browser.console_errors().await?;
    assert!(errors.len() == 1 && errors[0].contains("/cancel") && errors[0].contains("403"), "{errors:#?}");
    assert_eq!(run_status(&env, &run, Some(&submitter)).await?, "running");
    // Nor may a reader open the administration page.
    browser.client.goto(&format!("http://{api}/admin")).await?;
    let heading = browser.text("main h1").await?.unwrap_or_default();
    assert_eq!(heading, "403 Forbidden", "a reader's /admin");
    let refusal = browser.text(".error-message").await?.unwrap_or_default();
    assert!(refusal.contains("needs `admin`"), "{refusal}");
    browser.console_errors().await?; // the 403 just seen
    browser.client.goto(&format!("http://{api}/runs/{run}")).await?;
    // The session's cookie is no API token.
    let (status, _) = http(&api, "GET", "/v1/runs", None, None).await?;
    assert_eq!(status, 401);

    // A submitter's session has the button, and it works.
    browser.client.find(Locator::Css("form.who button")).await?.click().await?;
    wait_for("signing out", DEADLINE, || async {
        Ok((browser.client.current_url().await?.path() == "/login").then_some(()))
    })
    .await?;
    browser.sign_in(&api, &submitter, &format!("/runs/{run}")).await?;
    let source = browser.client.source().await?;
    let cancel = browser.client.find(Locator::Id("cancel-run")).await;
    let cancel = cancel.with_context(|| format!("a submitter's cancel button on {source}"))?;
    cancel.click().await?;
    wait_for("the run to be canceled", DEADLINE, || async {
        Ok((run_status(&env, &run, Some(&submitter)).await? == "canceled").then_some(()))
    })
    .await?;
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await
}

#[tokio::test]
async fn pages_read_in_full_without_javascript() -> anyhow::Result<()> {
    let env = Env::new("ui_nojs").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let run = submit(
        &env,
        "small",
        "name: small\nassets:\n  - name: raw\n    op: noop@1.1.0\n    partitions: [p1, p2]\n  - name: cooked\n    \
         op: noop@1.1.0\n    partitions: [p1, p2]\n    deps: [raw]\n",
    )
    .await?;
    wait_for("the run to succeed", DEADLINE, || async {
        Ok((run_status(&env, &run, None).await? == "succeeded").then_some(()))
    })
    .await?;
    // What a browser without scripts (or a screen reader, or curl) gets: the whole state.
    let pages: [(String, &[&str]); 7] = [
        ("/".into(), &["small", "4 of 4 finished: 4 succeeded", "succeeded"]),
        (format!("/runs/{run}"), &["4 of 4 finished: 4 succeeded", "raw", "cooked", "<svg", "Steps"]),
        (
            format!("/runs/{run}?status=succeeded&asset=cooked"),
            &["cooked", "data-step=\"2\"", "data-step=\"3\""],
        ),
        ("/assets".into(), &["raw", "cooked", "2 cells: 2 materialized"]),
        ("/assets/cooked?partition=p1".into(), &["p1", "p2", "materialized", "Lineage", "<svg", "raw"]),
        ("/ops".into(), &["noop@1.1.0", "opflow.op.noop"]),
        ("/admin".into(), &["API tokens", "Webhooks", "Deliveries", "run.succeeded"]),
    ];
    for (path, expected) in &pages {
        let (status, body) = http_text(&env.api_addr, "GET", path, None, None).await?;
        assert_eq!(status, 200, "{path}: {body}");
        for text in *expected {
            assert!(body.contains(text), "{path} lacks `{text}`");
        }
    }
    for (path, status) in [
        ("/runs/not-a-run".to_owned(), 400),
        (format!("/runs/{}", uuid::Uuid::new_v4()), 404),
        (format!("/runs/{run}/steps/99"), 404),
        ("/assets/nothing".into(), 404),
        (format!("/runs/{run}?status=bogus"), 400),
    ] {
        let (got, body) = http_text(&env.api_addr, "GET", &path, None, None).await?;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains("<h1>"), "{path} answers a page: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn an_admin_makes_a_token_on_the_page_and_revokes_it() -> anyhow::Result<()> {
    let env = Env::new("ui_admin").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let output = env.opflow_ok(&["tokens", "create", "root", "--scope", "admin"]).await?;
    let admin = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let browser = Browser::start().await?;
    browser.sign_in(&api, &admin, "/admin").await?;
    browser.client.find(Locator::Css("input[name=name]")).await?.send_keys("ci-pipeline").await?;
    browser.client.find(Locator::Css("select[name=scope] option[value=submit]")).await?.click().await?;
    browser.client.find(Locator::Css("form[action='/admin/tokens'] button")).await?.click().await?;
    let made =
        wait_for("the new token, shown once", DEADLINE, || async { browser.text("#secret").await }).await?;
    assert!(made.starts_with("opf_"), "{made}");
    let (status, _) = http(&api, "GET", "/v1/runs", Some(&made), None).await?;
    assert_eq!(status, 200, "the token made on the page opens the API");
    browser.client.goto(&format!("http://{api}/admin")).await?;
    browser.client.find(Locator::Css("tr[data-token='ci-pipeline'] button")).await?.click().await?;
    wait_for("the token to be revoked", DEADLINE, || async {
        let (status, _) = http(&api, "GET", "/v1/runs", Some(&made), None).await?;
        Ok((status == 401).then_some(()))
    })
    .await?;
    let row = browser.text("tr[data-token='ci-pipeline']").await?.unwrap_or_default();
    assert!(row.contains("revoked"), "{row}");
    let errors = browser.console_errors().await?;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await
}
