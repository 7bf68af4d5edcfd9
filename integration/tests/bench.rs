//! `opflow bench --quick`: every workload runs at a tenth of its size in its own sandbox, is
//! verified, and prints one JSON object per line with the documented fields.

use std::process::Stdio;

use anyhow::Context;
use opflow_integration::binary;
use serde_json::Value;

#[tokio::test]
async fn quick_bench_verifies_every_workload_and_prints_the_documented_fields() -> anyhow::Result<()> {
    let output = tokio::process::Command::new(binary("opflow")?)
        .args(["bench", "all", "--quick", "--json"])
        .env("OPFLOW_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        .env("OPFLOW_EVENTS_QUEUE_TYPE", "quorum")
        .env_remove("OPFLOW_CONFIG")
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "opflow bench failed:\n{stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect::<anyhow::Result<_>>()?;
    let workload =
        |name: &str| lines.iter().find(|l| l["workload"] == name).with_context(|| format!("no {name} line"));
    for line in &lines {
        for field in ["workload", "steps", "wall_s", "verified"] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        // Every workload but `api` (which times answers, not steps) runs steps.
        assert!(
            line["workload"] == "api" || line.get("steps_per_s").is_some(),
            "steps_per_s missing in {line}"
        );
        assert_eq!(line["verified"], true, "{line}");
        assert!(line["steps"].as_f64().unwrap_or(0.0) > 0.0, "{line}");
    }
    for (name, fields) in [
        ("raw", &["publish_per_s", "consume_per_s", "cycle_per_s", "chain_ms_per_step"][..]),
        ("w1", &["ratio_to_raw_consume", "ratio_to_raw_cycle"][..]),
        ("w2", &["ms_per_step", "ratio_to_raw_chain"][..]),
        ("w3", &["efficiency", "ratio_to_raw_cycle"][..]),
        ("w6", &["ratio_to_raw_consume", "ratio_to_raw_cycle"][..]),
    ] {
        let line = workload(name)?;
        for field in fields {
            assert!(line[*field].as_f64().is_some_and(|v| v > 0.0), "{name}: {field} missing in {line}");
        }
    }
    // The cycle's own CPU per message: what a worker's CPU per step is compared with.
    let cycle_cpu = &workload("raw")?["cycle_cpu_us_per_message"];
    for part in ["consumers", "broker"] {
        assert!(cycle_cpu[part].as_f64().is_some_and(|v| v > 0.0), "raw: {part} missing in {cycle_cpu}");
    }
    // The web UI's live run pages: each was sent updates while the run recorded events.
    let live = &workload("api")?["ui_live"];
    assert!(live["updates_per_s_per_viewer"].as_f64().is_some_and(|v| v > 0.0), "api: {live}");
    assert!(live["cpu_pct_per_viewer"].as_f64().is_some(), "api: {live}");
    // w2's deep chain: a tenth of 10,000 links, verified like every run.
    let deep = &workload("w2")?["deep"];
    assert_eq!(deep["steps"], 1_000, "w2: {deep}");
    assert_eq!(deep["verified"], true, "w2: {deep}");
    for field in ["ms_per_step", "ratio_to_shallow"] {
        assert!(deep[field].as_f64().is_some_and(|v| v > 0.0), "w2: deep.{field} missing in {deep}");
    }
    // CPU per step by component, read from the processes' counters: every component was
    // found and read (the bench runs on the broker's machine, as root here), and the total
    // is their sum.
    for name in ["w1", "w3", "w6"] {
        let cpu = &workload(name)?["cpu_us_per_step"];
        let parts: Vec<f64> = ["dispatcher", "postgres", "broker", "workers"]
            .iter()
            .map(|part| cpu[*part].as_f64().with_context(|| format!("{name}: {part} missing in {cpu}")))
            .collect::<anyhow::Result<_>>()?;
        assert!(parts.iter().all(|us| *us > 0.0), "{name}: {cpu}");
        let total = cpu["total"].as_f64().with_context(|| format!("{name}: total missing in {cpu}"))?;
        assert!(total > 0.0 && (total - parts.iter().sum::<f64>()).abs() < 1.0, "{name}: {cpu}");
    }
    let w4 = workload("w4")?;
    for field in ["cold_start_ms_median", "cold_start_ms_max"] {
        assert!(w4[field].as_f64().is_some_and(|v| v > 0.0), "w4: {field} missing in {w4}");
    }
    // w5: one line per plan size; a tenth of 50,000 and 200,000 steps, plus the fan-in.
    let w5: Vec<&Value> = lines.iter().filter(|l| l["workload"] == "w5").collect();
    assert_eq!(w5.iter().map(|l| l["steps"].as_i64()).collect::<Vec<_>>(), [Some(5_001), Some(20_001)]);
    for line in &w5 {
        for field in ["compile_s", "store_s", "peak_rss_mb"] {
            assert!(line[field].as_f64().is_some(), "w5: {field} missing in {line}");
        }
    }
    let w6 = workload("w6")?;
    for field in ["dispatcher_rss_mb", "worker_rss_mb", "db_bytes_per_step"] {
        assert!(w6[field].as_f64().is_some_and(|v| v > 0.0), "w6: {field} missing in {w6}");
    }
    let w7 = workload("w7")?;
    for field in [
        "cold_start_ms_median",
        "cold_start_ms_median_without_wakeup",
        "alternating_chain_s",
        "alternating_chain_s_without_forecast",
    ] {
        assert!(w7[field].as_f64().is_some_and(|v| v > 0.0), "w7: {field} missing in {w7}");
    }
    // w8: two owners side by side, each run verified, and the figures of the fair share.
    let w8 = workload("w8")?;
    for field in ["b_slowdown", "a_ratio", "b_alone_s", "b_shared_s", "a_alone_steps_per_s"] {
        assert!(w8[field].as_f64().is_some_and(|v| v > 0.0), "w8: {field} missing in {w8}");
    }
    // api: each endpoint's first (and middle) page timed, and opflow watch's first frame.
    let api = workload("api")?;
    let endpoints = api["endpoints"].as_array().context("api: endpoints")?;
    assert!(endpoints.len() >= 20, "{api}");
    for endpoint in endpoints {
        assert!(endpoint["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{endpoint}");
    }
    assert!(api["watch_first_frame_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{api}");
    // Every platform line says which queue types the steps and events went through.
    for name in ["w1", "w2", "w3", "w4", "w6"] {
        let line = workload(name)?;
        assert_eq!(line["queue_type"], "quorum", "{line}");
        assert_eq!(line["events_queue_type"], "quorum", "{line}");
    }
    // The sandbox is gone: its database and vhost were removed.
    let sandbox = stderr
        .lines()
        .find_map(|l| l.strip_prefix("benchmark sandbox: database and vhost "))
        .context("the bench names its sandbox on stderr")?
        .trim()
        .to_owned();
    let databases = std::process::Command::new("psql")
        .args(["postgres://postgres@127.0.0.1:5432/postgres", "-Atc", "SELECT datname FROM pg_database"])
        .output()?;
    assert!(
        !String::from_utf8_lossy(&databases.stdout).lines().any(|d| d == sandbox),
        "{sandbox} was left behind"
    );
    let vhosts = std::process::Command::new("rabbitmqctl").args(["-q", "list_vhosts"]).output()?;
    assert!(
        !String::from_utf8_lossy(&vhosts.stdout).lines().any(|v| v.trim() == sandbox),
        "vhost {sandbox} was left behind"
    );
    Ok(())
}
