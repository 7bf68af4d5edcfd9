//! The API's contract as other tools read it: `docs/openapi.json` passes a standard OpenAPI
//! validator (`openapi-spec-validator`), and a Python client generated from it
//! (`openapi-python-client`) drives a real dispatcher, every answer parsed into the
//! document's types. The tools live in a virtualenv `scripts/test.sh` prepares
//! (`OPFLOW_API_TOOLS`, by default `~/.cache/opflow/api-tools`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use opflow_integration::Env;

/// The document as the repository keeps it.
fn document() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

/// The virtualenv with the validator and the generator.
fn api_tools() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("OPFLOW_API_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var("HOME").context("HOME")?).join(".cache/opflow/api-tools"),
    };
    if !dir.join("bin/openapi-spec-validator").exists() || !dir.join("bin/openapi-python-client").exists() {
        bail!(
            "{} lacks openapi-spec-validator and openapi-python-client; scripts/test.sh installs them \
             (scripts/python-venv.sh api-tools openapi-spec-validator==0.7.1 openapi-python-client==0.24.3)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Runs the validator on `file`: whether it passed, and what it said.
async fn validate(tools: &Path, file: &Path) -> anyhow::Result<(bool, String)> {
    let output =
        tokio::process::Command::new(tools.join("bin/openapi-spec-validator")).arg(file).output().await?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), said))
}

#[tokio::test]
async fn the_openapi_document_passes_a_standard_validator() -> anyhow::Result<()> {
    let tools = api_tools()?;
    let (passed, said) = validate(&tools, &document()).await?;
    assert!(passed, "docs/openapi.json is refused:\n{said}");
    // The check of the check: two operations with one operationId are refused.
    let mut broken: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(document())?)?;
    broken["paths"]["/v1/queues"]["get"]["operationId"] = "list_runs".into();
    let file = std::env::temp_dir().join(format!("opflow_openapi_{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, broken.to_string())?;
    let (passed, said) = validate(&tools, &file).await?;
    std::fs::remove_file(&file).ok();
    assert!(!passed && said.contains("is not unique"), "a duplicate operationId was not refused:\n{said}");
    Ok(())
}

#[tokio::test]
async fn a_client_generated_from_the_document_drives_the_api() -> anyhow::Result<()> {
    let tools = api_tools()?;
    let env = Env::new("openapi_client").await?;
    let generated = std::env::temp_dir().join(format!("opflow_client_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&generated)?;
    let config = generated.join("config.yaml");
    std::fs::write(
        &config,
        "project_name_override: opflow-client\npackage_name_override: opflow_client\npost_hooks: []\n",
    )?;
    let out = generated.join("client");
    let generate = tokio::process::Command::new(tools.join("bin/openapi-python-client"))
        .arg("generate")
        .arg("--path")
        .arg(document())
        .arg("--config")
        .arg(&config)
        .arg("--output-path")
        .arg(&out)
        .output()
        .await?;
    assert!(
        generate.status.success(),
        "openapi-python-client refused docs/openapi.json:\n{}{}",
        String::from_utf8_lossy(&generate.stdout),
        String::from_utf8_lossy(&generate.stderr)
    );

    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _worker = env.spawn_worker("noop")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi_client.py");
    let driven = tokio::process::Command::new(tools.join("bin/python"))
        .arg(&script)
        .env("PYTHONPATH", &out)
        .env("OPFLOW_API", format!("http://{api}"))
        .output()
        .await?;
    std::fs::remove_dir_all(&generated).ok();
    let said =
        format!("{}{}", String::from_utf8_lossy(&driven.stdout), String::from_utf8_lossy(&driven.stderr));
    assert!(driven.status.success(), "the generated client disagreed with the API:\n{said}");
    assert!(said.contains("every answer parsed"), "{said}");
    Ok(())
}
